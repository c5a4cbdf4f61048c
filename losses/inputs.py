"""The call forms of a loss, reduced to one list of views: ``V >= 2`` tensors ``(N, d)``, row ``i`` of each a
view of instance ``i``.

======================================================  ==============================================
call                                                    views
======================================================  ==============================================
``loss_fn(z_a, z_b, labels=None, negatives=None)``      ``[z_a, z_b]`` (the classic pair; also by keyword)
``loss_fn(z_1, z_2, z_3, ..., labels=...)``             ``[z_1, z_2, z_3, ...]``
``loss_fn(views=[z_1, ..., z_V])``                      the list (``output.chunk(V)`` of a view-major batch)
``loss_fn(features, labels)``                           SupContrast's ``features`` ``(N, V, d)``: ``features[:, v]``
======================================================  ==============================================

Positional arguments after the views that are ``None`` or one-dimensional are the old positional
``labels`` (and then ``negatives``): ``loss_fn(z_a, z_b, y)`` keeps meaning labels ``y``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def _is_view(x: object) -> bool:
    return isinstance(x, Tensor) and x.dim() == 2


def collect_views(
    z_a, z_b, more: tuple, views: Sequence[Tensor] | None, labels, negatives
) -> tuple[list, Tensor | None, Tensor | None]:
    """``(views, labels, negatives)`` of a call; see the module docstring. Shapes are checked later, by
    :func:`mmcl.losses.checks.check_views`."""
    if views is not None:
        if z_a is not None or z_b is not None or more:
            raise ValueError("pass the views either positionally (loss_fn(z_1, z_2, ...)) or as views=[...], not both")
        if isinstance(views, Tensor) or not isinstance(views, Sequence):
            raise ValueError(
                f"views must be a list or tuple of (N, d) tensors (e.g. output.chunk(V)), got {type(views).__name__}; "
                "pass SupContrast-style features of shape (N, V, d) as the first argument instead"
            )
        return list(views), labels, negatives
    if _features_call(z_a, z_b) and not more:
        return list(z_a.unbind(1)), *_old_positional([z_b] if z_b is not None else [], labels, negatives, 1)
    positional = [z_a, z_b, *more]
    count = 2  # the first two are views whatever they hold: check_views names a bad one
    while count < len(positional) and _is_view(positional[count]):
        count += 1
    return positional[:count], *_old_positional(positional[count:], labels, negatives, count)


def _features_call(z_a, z_b) -> bool:
    """``loss_fn(features, labels)``: a 3-D first argument followed by 1-D labels."""
    return isinstance(z_a, Tensor) and z_a.dim() == 3 and (z_b is None or (isinstance(z_b, Tensor) and z_b.dim() == 1))


def _old_positional(trailing: list, labels, negatives, first: int) -> tuple:
    """Labels and negatives passed positionally after the views (the two-view signature's order)."""
    if len(trailing) > 2:
        raise ValueError(
            f"after the views, at most two positional arguments (labels, negatives) are taken; got {len(trailing)} "
            f"more from argument {first + 1} on: views must all have shape (N, d)"
        )
    for name, value, given in zip(("labels", "negatives"), trailing, (labels, negatives)):
        if given is not None and value is not None:
            raise ValueError(f"{name} was passed both positionally and by keyword")
    values = list(trailing) + [None] * (2 - len(trailing))
    return (labels if labels is not None else values[0], negatives if negatives is not None else values[1])

"""Float comparisons with tolerances that fit float32 at the size of the values compared.

Why relative: two computation paths that are both right (packed vs padded rows, FlexAttention
vs SDPA, prefopt vs TRL, one thread vs sixteen) round differently. float32 keeps 24 bits, so
each operation may be off by half a unit in the last place (ulp) of its result, and that unit
grows with the value: 1.2e-7 at 1, 3.8e-6 at 48, 7.6e-6 at 85. An absolute tolerance of 1e-5
on a summed log-prob of 85 is about one ulp: a CPU whose kernels add in another order (another
SIMD width, another thread count) fails it, although nothing is wrong.

The budget here: `ULPS` (64) float32 ulps of the value (`rtol` ≈ 7.6e-6), plus an absolute
part for values that can sit near zero. That absolute part is 64 ulps at magnitude 1, times
the number of token log-probs summed into the value (`tokens`): each summed term brings its
own rounding, and a difference of two sums (a log-ratio, a margin) can cancel down to zero
while keeping the errors of both. A real bug moves such values by far more: a token
mis-masked shifts a sum by that token's log-prob (~1), a wrong loss formula moves a loss by
1e-3 or more.

Use this helper only between two different computations of the same quantity. Where the same
computation runs twice (a cache read back, a resume replaying the same steps in the same
process) compare exactly (`rtol=0, atol=0` or `torch.equal`).
"""

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one ulp at 1.0
ULPS = 64  # headroom for a few dozen roundings and another reduction order
RTOL = ULPS * FLOAT32_EPS  # ≈ 7.6e-6


def f32_tolerances(*, tokens=None, ulps: int = ULPS) -> dict[str, float]:
    """`rtol` and `atol` for comparing float32 results of two computation paths.

    tokens: how many token log-probs were summed into each compared value (an int, or a
    tensor of counts such as `Logps.token_counts`, of which the largest is taken); a log-ratio
    of two n-token sums counts 2n. None: the values come from O(1) inputs.
    """
    rtol = ulps * FLOAT32_EPS
    if tokens is None:
        return {"rtol": rtol, "atol": rtol}
    count = int(torch.as_tensor(tokens).max()) if not isinstance(tokens, int) else tokens
    return {"rtol": rtol, "atol": rtol * max(count, 1)}


def _as_float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def assert_close_f32(actual, expected, *, tokens=None, ulps: int = ULPS, msg=None) -> None:
    """`torch.testing.assert_close` with `f32_tolerances` (see the module's docstring).

    actual, expected: tensors, floats or lists of floats, of the same shape; compared in float64
    so the comparison adds no rounding of its own. msg: a label put before torch's report.
    """
    torch.testing.assert_close(
        _as_float64(actual),
        _as_float64(expected),
        **f32_tolerances(tokens=tokens, ulps=ulps),
        msg=None if msg is None else lambda report: f"{msg}: {report}",
    )

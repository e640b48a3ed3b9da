"""Published per-model data of the feature-cache methods (docs/caching.md says where each number comes from).

TeaCache (github.com/ali-vilab/TeaCache, ``TeaCache4Wan2.1/teacache_generate.py``): the polynomial
that rescales the relative L1 change of the timestep embedding into an estimate of the change of
the model output, highest power first (``numpy.poly1d`` order). Two fits per model: one for the
time embedding ``e`` (the default mode; warm-up 1 step, the last step always computed) and one for
the modulation ``e0`` (TeaCache's ``--use_ret_steps``; warm-up 5 steps, no cut-off).

MagCache (github.com/Zehong-Ma/MagCache, ``MagCache4Wan2.1/magcache_generate.py`` and
``MagCache4Wan2.2/magcache_generate.py``): the calibrated magnitude ratio
``||r_t|| / ||r_{t-1}||`` of the blocks' residual at every forward of the calibration run,
conditional and unconditional interleaved, without the two leading 1.0 the original code prepends.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

#: TeaCache polynomial per model family and input: (coefficients, high power first)
TEACACHE_COEFFICIENTS: Dict[str, Dict[str, Tuple[float, ...]]] = {
    "wan2.1-t2v-1.3b": {
        "e": (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
        "e0": (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    },
    "wan2.1-t2v-14b": {
        "e": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
        "e0": (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    },
    "wan2.1-i2v-14b-480p": {
        "e": (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
        "e0": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    },
    "wan2.1-i2v-14b-720p": {
        "e": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
        "e0": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
    },
}

#: TeaCache thresholds of the published tables (TeaCache4Wan2.1/README.md): (slow, fast) per input
TEACACHE_THRESHOLDS: Dict[str, Dict[str, Tuple[float, float]]] = {
    "wan2.1-t2v-1.3b": {"e": (0.05, 0.08), "e0": (0.05, 0.10)},
    "wan2.1-t2v-14b": {"e": (0.14, 0.20), "e0": (0.10, 0.20)},
    "wan2.1-i2v-14b-480p": {"e": (0.13, 0.26), "e0": (0.20, 0.30)},
    "wan2.1-i2v-14b-720p": {"e": (0.20, 0.30), "e0": (0.20, 0.30)},
}

_MAG_WAN21_T2V_14B = (
    1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658,
    0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545,
    0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401,
    0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416,
    0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216, 0.99217,
    0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
    0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376,
    0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183,
    0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961,
    0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189,
)
_MAG_WAN21_T2V_1_3B = (
    1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685,
    0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506,
    0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485,
    0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416,
    0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927, 0.9927,
    0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
    0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503,
    0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411,
    0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019,
    0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939,
)
_MAG_WAN21_I2V_480P = (
    0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878,
    0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886,
    0.99065, 0.99068, 0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861,
    0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572,
    0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953, 0.98149, 0.9815,
    0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
    0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988,
    0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
)
_MAG_WAN21_I2V_720P = (
    0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917,
    0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103,
    0.99215, 0.99212, 0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097,
    0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603,
    0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719, 0.98497, 0.98497,
    0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
    0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655,
    0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
)
_MAG_WAN22_T2V_A14B = (
    1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679,
    0.99602, 0.99658, 0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683,
    0.99534, 0.99549, 0.99584, 0.99577, 0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473,
    0.99594, 0.9964, 0.99466, 0.99461, 0.99453, 0.99481, 0.99389, 0.99365, 0.99391, 0.99406,
    0.99354, 0.99361, 0.99283, 0.99278, 0.99268, 0.99263, 0.99057, 0.99091, 0.99125, 0.99126,
    0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339,
    0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728, 0.95857, 0.95855,
    0.94385, 0.94385, 0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181,
)
_MAG_WAN22_TI2V_5B_T2V = (
    0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548,
    0.99468, 0.9946, 0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441,
    0.99409, 0.99398, 0.99403, 0.99397, 0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378,
    0.9933, 0.99328, 0.99303, 0.99301, 0.99217, 0.99216, 0.992, 0.99201, 0.99201, 0.99202,
    0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155, 0.98958, 0.98957, 0.98959, 0.98958,
    0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561,
    0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101, 0.97981, 0.97979,
    0.97849, 0.97849, 0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917, 0.96913,
    0.96511, 0.96507, 0.96263, 0.96257, 0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936,
    0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872, 0.96949, 0.97015,
)
_MAG_WAN22_TI2V_5B_I2V = (
    0.99512, 0.99559, 0.99559, 0.99561, 0.99595, 0.99577, 0.99512, 0.99512, 0.99546, 0.99534,
    0.99543, 0.99531, 0.99496, 0.99491, 0.99504, 0.99499, 0.99444, 0.99449, 0.99481, 0.99481,
    0.99435, 0.99435, 0.9943, 0.99431, 0.99411, 0.99406, 0.99373, 0.99376, 0.99413, 0.99405,
    0.99363, 0.99359, 0.99335, 0.99331, 0.99244, 0.99243, 0.99229, 0.99229, 0.99239, 0.99236,
    0.99163, 0.9916, 0.99149, 0.99151, 0.99191, 0.99192, 0.9898, 0.98981, 0.9899, 0.98987,
    0.98849, 0.98849, 0.98846, 0.98846, 0.98861, 0.98861, 0.9874, 0.98738, 0.98588, 0.98589,
    0.98539, 0.98534, 0.98444, 0.98439, 0.9831, 0.98309, 0.98119, 0.98118, 0.98001, 0.98,
    0.97862, 0.97859, 0.97555, 0.97558, 0.97392, 0.97388, 0.97152, 0.97145, 0.96871, 0.9687,
    0.96435, 0.96434, 0.96129, 0.96127, 0.95639, 0.95638, 0.95176, 0.95175, 0.94446, 0.94452,
    0.93972, 0.93974, 0.93575, 0.9359, 0.93537, 0.93552, 0.96655, 0.96616,
)
_MAG_WAN22_I2V_A14B = (
    0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366,
    0.9943, 0.9943, 0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931,
    0.99379, 0.99377, 0.99268, 0.99271, 0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046,
    0.98931, 0.98933, 0.99087, 0.99088, 0.98852, 0.98855, 0.98895, 0.98896, 0.98806, 0.98808,
    0.9871, 0.98711, 0.98613, 0.98618, 0.98434, 0.98435, 0.983, 0.98307, 0.98185, 0.98187,
    0.98131, 0.98131, 0.9783, 0.97835, 0.97619, 0.9762, 0.97264, 0.9727, 0.97088, 0.97098,
    0.96568, 0.9658, 0.96045, 0.96055, 0.95322, 0.95335, 0.94579, 0.94594, 0.93297, 0.93311,
    0.91699, 0.9172, 0.89174, 0.89202, 0.8541, 0.85446, 0.79823, 0.79902,
)

#: MagCache ratio curve per model (calibrated at 50 steps for Wan2.1 T2V and TI2V-5B, 40 for the rest)
MAGCACHE_RATIOS: Dict[str, Tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": _MAG_WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": _MAG_WAN21_T2V_14B,
    "wan2.1-i2v-14b-480p": _MAG_WAN21_I2V_480P,
    "wan2.1-i2v-14b-720p": _MAG_WAN21_I2V_720P,
    "wan2.2-t2v-a14b": _MAG_WAN22_T2V_A14B,
    "wan2.2-i2v-a14b": _MAG_WAN22_I2V_A14B,
    "wan2.2-ti2v-5b": _MAG_WAN22_TI2V_5B_T2V,
    "wan2.2-ti2v-5b+image": _MAG_WAN22_TI2V_5B_I2V,
}

#: MagCache defaults of the published commands (threshold, K = most consecutive reuses, retention
#: ratio = share of the first steps always computed)
MAGCACHE_DEFAULTS: Dict[str, Tuple[float, int, float]] = {
    "wan2.1-t2v-1.3b": (0.12, 4, 0.2),
    "wan2.1-t2v-14b": (0.24, 6, 0.2),
    "wan2.1-i2v-14b-480p": (0.24, 6, 0.2),
    "wan2.1-i2v-14b-720p": (0.24, 6, 0.2),
    "wan2.2-t2v-a14b": (0.06, 2, 0.4),
    "wan2.2-i2v-a14b": (0.06, 2, 0.1),
    "wan2.2-ti2v-5b": (0.06, 2, 0.2),
}

#: the model whose published data a preset uses: tiny presets and distilled variants share their
#: architecture's numbers; the report names the source
DATA_SOURCE: Dict[str, str] = {
    "wan2.1-t2v-tiny": "wan2.1-t2v-1.3b",
    "wan2.1-i2v-tiny": "wan2.1-i2v-14b-480p",
    "wan2.2-t2v-a14b-tiny": "wan2.2-t2v-a14b",
    "wan2.2-i2v-a14b-tiny": "wan2.2-i2v-a14b",
    "wan2.2-ti2v-5b-tiny": "wan2.2-ti2v-5b",
}

#: TeaCache publishes no Wan2.2 fit: the two-expert models use the Wan2.1 14B fit of their task
#: (same widths and depth); the report says so
TEACACHE_BORROWED: Dict[str, str] = {
    "wan2.2-t2v-a14b": "wan2.1-t2v-14b",
    "wan2.2-i2v-a14b": "wan2.1-i2v-14b-480p",
}


#: published end-to-end times with and without TeaCache (TeaCache4Wan2.1/README.md, one A800,
#: 50 steps T2V / 40 steps I2V, CFG): (model, input, threshold, uncached s, cached s)
TEACACHE_TIMES: Tuple[Tuple[str, str, float, float, float], ...] = (
    ("wan2.1-t2v-1.3b", "e", 0.05, 97.0, 64.0),
    ("wan2.1-t2v-1.3b", "e", 0.08, 97.0, 49.0),
    ("wan2.1-t2v-14b", "e", 0.14, 1829.0, 1234.0),
    ("wan2.1-t2v-14b", "e", 0.20, 1829.0, 909.0),
    ("wan2.1-t2v-14b", "e0", 0.10, 1829.0, 915.0),
    ("wan2.1-t2v-14b", "e0", 0.20, 1829.0, 578.0),
    ("wan2.1-i2v-14b-480p", "e", 0.13, 385.0, 241.0),
    ("wan2.1-i2v-14b-480p", "e", 0.26, 385.0, 156.0),
    ("wan2.1-i2v-14b-720p", "e", 0.20, 903.0, 476.0),
    ("wan2.1-i2v-14b-720p", "e", 0.30, 903.0, 363.0),
)


def published_reuse(preset_name: str, steps: int) -> List[Tuple[str, float, int, float]]:
    """The reused-step counts the published TeaCache times imply at ``steps`` steps: for each
    published setting (input, threshold), ``round(steps * (1 - cached / uncached))`` steps reused
    in both branches (the time outside the DiT, a few per cent, is neglected, so this slightly
    under-counts), with the published speed-up."""
    name = data_model(preset_name)
    out = []
    for model, inp, thr, base, cached in TEACACHE_TIMES:
        if model == name:
            out.append(("%s@%g" % (inp, thr), thr, int(round(steps * (1.0 - cached / base))), round(base / cached, 3)))
    return out


def even_schedule(steps: int, reuse: int, first: int = 1, last: int = 1) -> Tuple[int, ...]:
    """``reuse`` steps spread evenly over ``first .. steps - 1 - last`` (the first and the last
    steps computed, as TeaCache's default mode does); at most every one of those steps."""
    pool = list(range(first, steps - last))
    reuse = max(0, min(reuse, len(pool)))
    if reuse == 0:
        return ()
    picks = sorted({pool[int(i * len(pool) / reuse + len(pool) / (2 * reuse))] for i in range(reuse)})
    return tuple(picks)


def data_model(preset_name: str) -> str:
    return DATA_SOURCE.get(preset_name, preset_name)


def teacache_fit(preset_name: str) -> Tuple[Optional[str], Optional[Dict[str, Tuple[float, ...]]]]:
    """(the model whose fit is used, {input: coefficients}) or (None, None) when none is published."""
    name = data_model(preset_name)
    name = TEACACHE_BORROWED.get(name, name)
    fit = TEACACHE_COEFFICIENTS.get(name)
    return (name, fit) if fit is not None else (None, None)


def nearest_interp(values: Sequence[float], length: int) -> Tuple[float, ...]:
    """Resample a per-step curve to ``length`` steps by nearest index (MagCache's own rule:
    ``round(i * (n - 1) / (length - 1))``; one step takes the last value)."""
    n = len(values)
    if length == 1:
        return (float(values[-1]),)
    scale = (n - 1) / (length - 1)
    return tuple(float(values[int(_round_half_even(i * scale))]) for i in range(length))


def _round_half_even(x: float) -> int:
    return int(round(x))  # Python's round is numpy's: half to even


Curve = Tuple[Tuple[float, float], ...]


def magcache_curve(preset_name: str, steps: int, image: bool = False) -> Tuple[Optional[str], Optional[Curve]]:
    """(source model, per step (cond ratio, uncond ratio)) resampled to ``steps``; the first step's
    ratio is 1.0 (nothing cached yet), as in the original; (None, None) when none is published."""
    name = data_model(preset_name)
    key = name + "+image" if image and name + "+image" in MAGCACHE_RATIOS else name
    ratios = MAGCACHE_RATIOS.get(key)
    if ratios is None:
        return None, None
    full = (1.0, 1.0) + tuple(ratios)
    cond, uncond = full[0::2], full[1::2]
    if len(cond) != steps:
        cond, uncond = nearest_interp(cond, steps), nearest_interp(uncond, steps)
    return key, tuple(zip(cond, uncond))


__all__ = ["TEACACHE_TIMES", "published_reuse", "even_schedule", "TEACACHE_COEFFICIENTS", "TEACACHE_THRESHOLDS",
           "MAGCACHE_RATIOS", "MAGCACHE_DEFAULTS", "data_model",
           "teacache_fit", "magcache_curve", "nearest_interp"]

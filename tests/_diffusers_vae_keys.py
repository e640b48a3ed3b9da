"""Official Wan2.1 VAE key names -> diffusers ``AutoencoderKLWan`` key names (docs/wan-model.md §7.2).

Written from the mapping table, for the parity tests only (diffusers is a test-only dependency
used as an independent implementation).
"""

from __future__ import annotations

import re

_RES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2.",
        "shortcut.": "conv_shortcut."}


def _res_tail(tail: str) -> str:
    for old, new in _RES.items():
        if tail.startswith(old):
            return new + tail[len(old):]
    return tail  # resample.* / time_conv.* keep their names


def vae21_official_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    fixed = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if m is None:
        raise KeyError(key)
    part, rest = m.groups()
    simple = {"conv1.": "conv_in.", "head.0.": "norm_out.", "head.2.": "conv_out."}
    for old, new in simple.items():
        if rest.startswith(old):
            return "%s.%s%s" % (part, new, rest[len(old):])
    m = re.match(r"^middle\.(\d)\.(.*)$", rest)
    if m:
        i, tail = int(m.group(1)), m.group(2)
        if i == 1:
            return "%s.mid_block.attentions.0.%s" % (part, tail)
        return "%s.mid_block.resnets.%d.%s" % (part, i // 2, _res_tail(tail))
    m = re.match(r"^downsamples\.(\d+)\.(.*)$", rest)
    if m:
        return "encoder.down_blocks.%s.%s" % (m.group(1), _res_tail(m.group(2)))
    m = re.match(r"^upsamples\.(\d+)\.(.*)$", rest)
    if m:
        n, tail = int(m.group(1)), m.group(2)
        per_block = num_res_blocks + 2  # (num_res_blocks+1) res blocks + one upsampler
        blk, j = divmod(n, per_block)
        if j == num_res_blocks + 1:
            return "decoder.up_blocks.%d.upsamplers.0.%s" % (blk, tail)
        return "decoder.up_blocks.%d.resnets.%d.%s" % (blk, j, _res_tail(tail))
    raise KeyError(key)


def vae22_official_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """Official Wan2.2 VAE key -> diffusers ``AutoencoderKLWan(is_residual=True)`` key (docs/wan-model.md §7.2,
    ``convert_vae_22``): the nested stage layout ``{en,de}coder.{down,up}samples.X.{down,up}samples.Y``
    becomes ``{down,up}_blocks.X.resnets.Y`` or, for the trailing Resample, ``.downsampler`` /
    ``.upsampler``; everything else maps as in Wan2.1."""
    m = re.match(r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.*)$", key)
    if m:
        x, y, tail = m.group(1), int(m.group(2)), m.group(3)
        if y == num_res_blocks:
            return "encoder.down_blocks.%s.downsampler.%s" % (x, tail)
        return "encoder.down_blocks.%s.resnets.%d.%s" % (x, y, _res_tail(tail))
    m = re.match(r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.*)$", key)
    if m:
        x, y, tail = m.group(1), int(m.group(2)), m.group(3)
        if y == num_res_blocks + 1:
            return "decoder.up_blocks.%s.upsampler.%s" % (x, tail)
        return "decoder.up_blocks.%s.resnets.%d.%s" % (x, y, _res_tail(tail))
    return vae21_official_to_diffusers(key, num_res_blocks)

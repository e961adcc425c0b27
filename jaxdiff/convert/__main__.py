"""Command line: `python -m jaxdiff.convert diffusers-unet SRC DST` or `pytorch-fid-inception SRC DST`.

diffusers-unet converts the diffusers UNet2DModel folder SRC into DST (unet_config.json + an Orbax
checkpoint of the parameters), readable with `jaxdiff.convert.load_converted(DST)`.
pytorch-fid-inception converts pytorch-fid's pt_inception-2015-12-05-6726825d.pth (needs torch) into
a safetensors file, readable with `jaxdiff.metrics.load_inception(DST)`.
"""

from __future__ import annotations

import argparse
import sys

from jaxdiff.convert.diffusers_unet import convert_diffusers_unet
from jaxdiff.convert.pytorch_fid_inception import convert_pytorch_fid_inception


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxdiff.convert", description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  unet = commands.add_parser("diffusers-unet", help="convert a diffusers UNet2DModel folder")
  unet.add_argument("src", help="folder with config.json and diffusion_pytorch_model.safetensors")
  unet.add_argument("dst", help="new output folder")
  inception = commands.add_parser(
    "pytorch-fid-inception", help="convert pytorch-fid's FID Inception weights (needs torch)"
  )
  inception.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
  inception.add_argument("dst", help="new .safetensors file")
  args = parser.parse_args(argv)
  convert = {
    "diffusers-unet": convert_diffusers_unet,
    "pytorch-fid-inception": convert_pytorch_fid_inception,
  }[args.command]
  try:
    convert(args.src, args.dst)
  except (ValueError, OSError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

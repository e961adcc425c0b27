"""Command line: `python -m jaxdiff.convert COMMAND SRC DST`, one COMMAND per source format.

diffusers-unet converts the diffusers UNet2DModel folder SRC into DST (network_config.json + an
Orbax checkpoint of the parameters), readable with `jaxdiff.convert.load_converted(DST)`.
diffusers-dit (a DiTTransformer2DModel folder) and dit-checkpoint (a facebookresearch/DiT .pt file,
needs torch; `--num-heads N` for a width no DiT preset has) write a DiT's folder the same way.
pytorch-fid-inception converts pytorch-fid's pt_inception-2015-12-05-6726825d.pth (needs torch) into
a safetensors file, readable with `jaxdiff.metrics.load_inception(DST)`.
diffusers-vae converts the diffusers AutoencoderKL folder SRC into DST the same way as
diffusers-unet; the module `load_converted(DST)` returns keeps the config's scaling_factor.
lpips takes two sources, `lpips BACKBONE LINEAR DST`: torchvision's vgg16-397923af.pth and the lpips
package's weights/v0.1/vgg.pth (needs torch), written as one safetensors file readable with
`jaxdiff.metrics.load_lpips(DST)`.
diffusers-dit and dit-checkpoint take `--prediction flow` for a flow-matching DiT (SiT, or a DiT
trained with flow matching), which has the DiT's layout: DST's network_config.json then says so
(`jaxdiff.convert.folder_prediction(DST)`); without it the folder declares nothing (the DiT
release and diffusers' DiT predict ε).
Every source and DST may be a local path or a bucket URL (`gs://…`, needs gcsfs; through
`jaxdiff.storage`); an existing DST that is not an empty folder (a file, for the .safetensors
outputs) is refused before anything is read or written.
"""

from __future__ import annotations

import argparse
import sys

from jaxdiff import diffusion, flow
from jaxdiff.convert.diffusers_dit import convert_diffusers_dit
from jaxdiff.convert.diffusers_unet import convert_diffusers_unet
from jaxdiff.convert.diffusers_vae import convert_diffusers_vae
from jaxdiff.convert.dit import convert_dit_checkpoint
from jaxdiff.convert.lpips import convert_lpips
from jaxdiff.convert.pytorch_fid_inception import convert_pytorch_fid_inception


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxdiff.convert", description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  unet = commands.add_parser("diffusers-unet", help="convert a diffusers UNet2DModel folder")
  unet.add_argument("src", help="folder with config.json and diffusion_pytorch_model.safetensors")
  unet.add_argument("dst", help="new output folder (a local path or a gs:// URL)")
  vae = commands.add_parser("diffusers-vae", help="convert a diffusers AutoencoderKL folder")
  vae.add_argument("src", help="folder with config.json and diffusion_pytorch_model.safetensors")
  vae.add_argument("dst", help="new output folder (a local path or a gs:// URL)")
  dit = commands.add_parser("diffusers-dit", help="convert a diffusers DiTTransformer2DModel dir")
  dit.add_argument("src", help="folder with config.json and diffusion_pytorch_model.safetensors")
  dit.add_argument("dst", help="new output folder (a local path or a gs:// URL)")
  original = commands.add_parser(
    "dit-checkpoint", help="convert a facebookresearch/DiT .pt checkpoint (needs torch)"
  )
  original.add_argument("src", help="e.g. DiT-XL-2-256x256.pt, or a checkpoint of its train.py")
  original.add_argument("dst", help="new output folder (a local path or a gs:// URL)")
  original.add_argument(
    "--num-heads", type=int, help="attention heads (default: the DiT preset's of that width)"
  )
  for parser_of_dit in (dit, original):
    parser_of_dit.add_argument(
      "--prediction",
      choices=(*diffusion.PREDICTIONS, flow.PREDICTION),
      help="what the network predicts, recorded in DST (flow: a flow-matching DiT such as SiT)",
    )
  inception = commands.add_parser(
    "pytorch-fid-inception", help="convert pytorch-fid's FID Inception weights (needs torch)"
  )
  inception.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
  inception.add_argument("dst", help="new .safetensors file (a local path or a gs:// URL)")
  lpips = commands.add_parser("lpips", help="convert LPIPS-VGG16's two weight files (needs torch)")
  lpips.add_argument("src", metavar="backbone", help="torchvision's vgg16-397923af.pth")
  lpips.add_argument("linear", help="the lpips package's lpips/weights/v0.1/vgg.pth")
  lpips.add_argument("dst", help="new .safetensors file (a local path or a gs:// URL)")
  args = parser.parse_args(argv)
  convert = {
    "diffusers-unet": convert_diffusers_unet,
    "diffusers-vae": convert_diffusers_vae,
    "diffusers-dit": lambda src, dst: convert_diffusers_dit(src, dst, prediction=args.prediction),
    "dit-checkpoint": lambda src, dst: convert_dit_checkpoint(
      src, dst, num_heads=args.num_heads, prediction=args.prediction
    ),
    "pytorch-fid-inception": convert_pytorch_fid_inception,
    "lpips": lambda src, dst: convert_lpips(src, args.linear, dst),
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

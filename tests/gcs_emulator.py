"""gcp-storage-emulator (PyPI) as tests/bucket.py runs it: `python tests/gcs_emulator.py ARGS`, ARGS
being the emulator's own command line.

Real GCS answers a media download with the object's generation in `x-goog-generation` (and
`x-goog-metageneration`); the emulator leaves them out, and TensorStore, which writes and reads
Orbax's arrays, refuses a download without them ("Malformed StorageGeneration"). This adds them
before the emulator builds its routes. Real GCS also serves a suffix range (`Range: bytes=-N`, the
last N bytes), with which array_record's reader (google-cloud-cpp) reads a file's footer first; the
emulator knows only `bytes=A-B` and would answer with the whole object, so a suffix range is
rewritten into that form. Nothing else of the emulator changes.
"""

import re
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    pass  # the emulator's own download answers 404
  else:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
    headers = request._request_handler.headers  # noqa: SLF001 — the emulator's own request
    suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range", ""))
    if suffix:
      size = int(obj["size"])
      headers.replace_header("range", f"bytes={max(size - int(suffix.group(1)), 0)}-")
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation

from gcp_storage_emulator.__main__ import main  # noqa: E402 — after the patch: it builds the routes

if __name__ == "__main__":
  main(sys.argv[1:])

#!/usr/bin/env bash
# The prepared GPU check (benchmarks/device_check.py says what it runs): on a machine with one NVIDIA GPU,
# from the project root, under 8 minutes, one JSON line per figure, failures with their tracebacks.
#
# The packed site: ../shared/tools/device-site.sh builds .device-site/site.tar.xz (ignored by git; name
# .device-site in the device tool's `carry`). faiss-gpu is too big to travel with it (its wheel is 48 MB):
# put the faiss-gpu-cu12 wheel in .device-faiss/ and carry that in a call of its own; once unpacked on the
# machine (/tmp/faiss-gpu) it is used by later calls while the machine stays warm. Without it k-means and
# IVF run on the CPU and their lines say so.
#
#   benchmarks/device_check.sh [--only STEP ...] | tee benchmarks/results/device_check-CARD-DATE.jsonl
#   benchmarks/device_check.sh --dry-run      # the CPU at toy sizes (tests/test_device_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .device-site/site.tar.xz ] && [ ! -d .device-site/site ]; then
  python3 -c "import tarfile; tarfile.open('.device-site/site.tar.xz').extractall('.device-site/site')"
fi
if compgen -G ".device-faiss/*.whl" >/dev/null && [ ! -d /tmp/faiss-gpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/faiss-gpu .device-faiss/*.whl
fi
site=""
[ -d /tmp/faiss-gpu ] && site=/tmp/faiss-gpu:
[ -d .device-site/site ] && site="$site$PWD/.device-site/site:"
export PYTHONPATH="$site$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/device_check.py "$@"

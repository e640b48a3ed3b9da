# Source from the repository root on the GPU machine, once per device call (idempotent on a warm
# machine): installs the wheels carried in .whl/ (and .whl2/) into /tmp/site, joins flash-attn-4's CUTLASS cu13
# library once both xz pieces have been carried (.cu13xa/ in one call, .cu13xb/ in the next: the
# piece is larger than one call may carry, see benchmarks/README.md), puts /tmp/site and the
# nvidia_cutlass_dsl dsl_packages folder on PYTHONPATH and installs wanport from this tree.
mkdir -p /tmp/scratch /tmp/res
for d in .cu13xa .cu13xb; do [ -d "$d" ] && cp -n "$d"/* /tmp/scratch/; done
if [ -d .whl ] && [ ! -e /tmp/site/.wheels-done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.wheels-done
fi
if [ -d .whl2 ] && [ ! -e /tmp/site/.wheels2-done ]; then  # more wheels, carried in the second call
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl \
    && touch /tmp/site/.wheels2-done
fi
if [ -e /tmp/scratch/cu13.part.00 ] && [ -e /tmp/scratch/cu13.part.01 ] && [ ! -e /tmp/site/.cu13-done ]; then
  cat /tmp/scratch/cu13.part.* | python3 -c "
import sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz') as t:
    t.extractall('/tmp/site', **({'filter': 'tar'} if hasattr(tarfile, 'tar_filter') else {}))
" && touch /tmp/site/.cu13-done
fi
# one machine lost ftfy from /tmp/site between calls (cause not found): put it back if it cannot import
if [ -d .whl ] && ! PYTHONPATH=/tmp/site python3 -c "import ftfy" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ftfy*.whl
fi
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
if [ ! -e /tmp/site/.wanport-done ]; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/res/pip.log 2>&1 && touch /tmp/site/.wanport-done
fi

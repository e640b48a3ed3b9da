# Source on a GPU machine without a network, from the repository root:
#   . benchmarks/device/env.sh
# Installs the wheels carried in .whl/ (and a wheel carried in pieces under /tmp/scratch/*.part.*,
# joined first) into /tmp/site, puts them on the path, and installs wanport from this tree.
# nvidia-cutlass-dsl's .pth is not processed by a --target install, so its dsl_packages folder is
# added to PYTHONPATH here (flash-attn-4 imports cutlass.cute from there).
if ls /tmp/scratch/*.part.* >/dev/null 2>&1; then
  cat /tmp/scratch/*.part.* > /tmp/scratch/joined.whl
  n=$(python3 -c "import zipfile; print(next(f.split('.dist-info')[0] for f in zipfile.ZipFile('/tmp/scratch/joined.whl').namelist() if '.dist-info/' in f))")
  cp /tmp/scratch/joined.whl ".whl/$n-cp312-cp312-manylinux_2_28_x86_64.whl"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || return 1

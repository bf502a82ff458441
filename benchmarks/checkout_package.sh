# Sourced by the device scripts: the checkout as the package layerprune under /tmp/lp without installing it,
# layerprune/'s own modules plus a link per subpackage as setup.cfg's package_dir maps them
# (layerprune.NAME = FOLDER). Run from the repository root; PYTHONPATH is left to the caller.
mkdir -p /tmp/lp/layerprune && cp layerprune/*.py /tmp/lp/layerprune/
sed -n 's/^ *layerprune\.\([a-z_]*\) *= *\([^ ]*\) *$/\1 \2/p' setup.cfg | while read -r name folder; do
  ln -sfn "$PWD/$folder" "/tmp/lp/layerprune/$name"; done

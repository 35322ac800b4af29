#!/usr/bin/env bash
# Checks the system parts pip cannot install and says how to get them. Never fails the build for Java
# (only METEOR needs it; evaluate_caption.py has --no_meteor), but does for headless OpenGL.
missing=0
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
if [ "${PYOPENGL_PLATFORM:-egl}" = "osmesa" ]; then
  have_lib libOSMesa.so || { echo "setup: OSMesa missing: apt-get install libosmesa6 (or use PYOPENGL_PLATFORM=egl)"; missing=1; }
else
  for lib in libEGL.so.1 libEGL_mesa.so.0 libGL.so.1; do
    have_lib "$lib" || { echo "setup: $lib missing"; missing=1; }
  done
  compgen -G "/usr/lib/*/dri/*swrast_dri.so" >/dev/null || compgen -G "/usr/lib/*/libgallium*" >/dev/null \
    || { echo "setup: Mesa's software renderer (swrast_dri.so) missing"; missing=1; }
  [ $missing = 0 ] || echo "setup: headless rendering needs EGL: sudo apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgl1"
fi
if ! command -v java >/dev/null 2>&1; then
  echo "setup: note: Java not found; METEOR needs it (sudo apt-get install default-jre-headless), or pass --no_meteor"
fi
exit $missing

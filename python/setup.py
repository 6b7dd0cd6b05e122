"""Builds the native half of the amdim package with CMake: the repository
one directory up is configured (CUDA, MPI and the emulated device off: the
loader needs none of them) and only libamdim_loader.so and amdim-load (with
amdim-peek) are built; they are copied into amdim/_native/ in the wheel.

Environment: AMDIM_CMAKE_BUILD_DIR (default python/build/cmake) to reuse a
build directory, AMDIM_CMAKE_ARGS (more -D options), CMAKE (the cmake to run)."""
import os
import shlex
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NATIVE = ["libamdim_loader.so", "amdim-load", "amdim-peek"]


class BuildNative(build_py):
    def run(self):
        super().run()
        if not os.path.exists(os.path.join(REPO, "CMakeLists.txt")):
            raise SystemExit("amdim: %s has no CMakeLists.txt: build the package from a clone of the repository "
                             "(python3 -m pip install ./python)" % REPO)
        cmake = os.environ.get("CMAKE") or shutil.which("cmake")
        if not cmake:
            raise SystemExit("amdim: cmake not found (Debian: tools/install-deps.sh, or apt-get install cmake)")
        build = os.environ.get("AMDIM_CMAKE_BUILD_DIR") or os.path.join(HERE, "build", "cmake")
        args = [cmake, "-S", REPO, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DAMDIM_ENABLE_CUDA=OFF",
                "-DAMDIM_ENABLE_MPI=OFF", "-DAMDIM_BUILD_CUDAEMU=OFF"]
        args += shlex.split(os.environ.get("AMDIM_CMAKE_ARGS", ""))
        self.announce("amdim: " + " ".join(args), level=2)
        subprocess.check_call(args)
        subprocess.check_call([cmake, "--build", build, "-j", str(os.cpu_count() or 1), "--target",
                               "amdim_loader_shared", "amdim-load", "amdim-peek"])
        out = os.path.join(self.build_lib, "amdim", "_native")
        os.makedirs(out, exist_ok=True)
        for name in NATIVE:
            shutil.copy2(os.path.join(build, name), os.path.join(out, name))


class BinaryDistribution(Distribution):
    """The wheel holds native code: tag it for this platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildNative}, distclass=BinaryDistribution)

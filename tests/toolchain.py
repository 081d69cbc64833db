"""Whether this machine's C toolchain can build (and run) with given flags: the tests
that need sanitizers or libFuzzer skip, with a reason, where it cannot."""
import os
import shutil
import subprocess


def builds(cc, flags, source, tmp, run):
    """True if `cc flags` compiles and links `source`, and, when `run`, the program exits 0."""
    if shutil.which(cc) is None or shutil.which("make") is None:
        return False
    src, exe = os.path.join(tmp, "t.c"), os.path.join(tmp, "t")
    with open(src, "w") as f:
        f.write(source)
    if subprocess.run([cc, *flags, src, "-o", exe], capture_output=True).returncode != 0:
        return False
    return not run or subprocess.run([exe], capture_output=True).returncode == 0

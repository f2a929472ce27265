"""Makes tch's C wrapper compile against an older libtorch: every wrapper whose body the
compiler refuses (an operator this libtorch lacks, or one whose arguments changed since) is
made to raise "not in this libtorch" instead, through the wrapper's own PROTECT, so that
calling it from Rust is an error and never undefined behaviour. outerloop calls none of them.

    python3 bench/device/patch_torch_sys.py TORCH_SYS_COPY LIBTORCH

TORCH_SYS_COPY: a copy of the torch-sys crate's source, patched in place; LIBTORCH: the
libtorch whose headers it must compile against. Prints the wrappers it stubbed.
"""
import re
import subprocess
import sys


def refused_lines(source, libtorch):
    """Lines of `source` the compiler refuses, checking syntax only."""
    cmd = ["g++", "-fsyntax-only", "-std=c++17", "-w", "-fmax-errors=0",
           f"-I{libtorch}/include", f"-I{libtorch}/include/torch/csrc/api/include", source]
    out = subprocess.run(cmd, stderr=subprocess.PIPE, text=True).stderr
    pattern = re.compile(re.escape(source) + r":(\d+):\d+: error:")
    return {int(m.group(1)) for m in pattern.finditer(out)}, out


def main():
    crate, libtorch = sys.argv[1], sys.argv[2]
    source = f"{crate}/libtch/torch_api_generated.cpp"
    for _ in range(3):
        lines, log = refused_lines(source, libtorch)
        if not lines:
            return
        text = open(source).read().split("\n")
        # Each wrapper starts at column 0 and ends with the first "}" at column 0 after it;
        # all return their tensors through `out__`, so a stub needs no value to return (one
        # that did would be left alone and reported below).
        starts = [i for i, l in enumerate(text) if re.match(r"^void atg_\w+\(", l)]
        stubbed = []
        for start in starts:
            end = next(i for i in range(start, len(text)) if text[i] == "}")
            if any(start < n - 1 <= end for n in lines):
                name = re.search(r"(atg_\w+)\(", text[start]).group(1)
                body = ['  PROTECT(',
                        f'    throw std::runtime_error("{name}: not in this libtorch");',
                        '  )']
                text[start + 1:end] = body + [""] * (end - start - 1 - len(body))
                stubbed.append(name)
        if not stubbed:
            sys.exit("refused lines outside any wrapper:\n" + log[-3000:])
        open(source, "w").write("\n".join(text))
        print("stubbed:", " ".join(stubbed))
    sys.exit("still refused after three passes:\n" + refused_lines(source, libtorch)[1][-3000:])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Predicted throughput of the aarch64 kernels, without an ARM board.

    python3 tools/armperf.py [--quick] [--tokens N] [--json FILE]     (or: make armperf)

For each NEON kernel set, weight kinds --kinds (Q4S row-major and Q4S_R4, its rows
interleaved by 4), decode (1 token) and prompt (--tokens per call), Llama-3.2-1B row
widths 2048 and 8192, group sizes 32, 64 and 128:
  1. build tools/armperf_driver.c with the kernel sources, statically for aarch64;
  2. run it under `qemu-aarch64 -cpu max -d in_asm,exec,nochain` and rebuild the stream
     of instructions executed between the markers armperf_begin() and armperf_end();
  3. cut that stream into its repeated unit (one or more weight rows: the kernel's own
     row step, found from the trace) and run llvm-mca (LLVM 22) on the unit for the
     cores that use the set: `neon_dotprod` on Neoverse-N1 (LLVM's stand-in for the
     Cortex-A76: its `cortex-a76` is the A57 model) and Cortex-A55, `neon` on
     Cortex-A72 and Cortex-A53;
  4. print weight bytes/cycle (decode) and MAC/cycle, then Llama-3.2-1B tokens/s bounds
     for four boards from the g128 figures.
llvm-mca models a steady-state loop whose loads all hit L1 with perfect branch
prediction, so the figures are kernel-only upper bounds; the in-order A55/A53 models
forward no accumulators, so their simulated figure is pessimistic and the resource bound
("Block RThroughput", in parentheses) optimistic: hardware should fall in between.
Nothing here is timed. Needs only Debian packages: gcc-aarch64-linux-gnu, qemu-user,
llvm-22. The compiler, flags and kernel sources are the Makefile's (AARCH64_CC,
CFLAGS, BASE_CFLAGS, KERNEL_SRCS, asked from make); QEMU_AARCH64, LLVM_MCA, LLVM_OBJDUMP
and LLVM_NM name other binaries.
"""
import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, 'tools', 'armperf_driver.c')
QEMU = os.environ.get('QEMU_AARCH64', 'qemu-aarch64')
MCA = os.environ.get('LLVM_MCA', 'llvm-mca-22')
OBJDUMP = os.environ.get('LLVM_OBJDUMP', 'llvm-objdump-22')
NM = os.environ.get('LLVM_NM', 'llvm-nm-22')
ARCH_FLAGS = '-march=armv8-a -static'  # as the Makefile's aarch64 rules add them

# the cores each kernel set is predicted for: (llvm-mca cpu, label, in order?)
CORES = {
    'neon_dotprod': [('neoverse-n1', 'A76 (N1 model)', False), ('cortex-a55', 'A55', True)],
    'neon': [('cortex-a72', 'A72', False), ('cortex-a53', 'A53', True)],
}
WIDTHS = (2048, 8192)
GROUPS = (32, 64, 128)
ROWS = 8          # rows per traced call; the unit is ROWS / N of them, N in UNITS
UNITS = (8, 4, 2)
MCA_INSNS = 40000  # instructions simulated per llvm-mca run (the unit repeated)

# Llama-3.2-1B: weight MACs per token by row width (q, k, v, o, gate, up read rows of
# 2048; down rows of 8192; the tied classifier rows of 2048) and the layer share
LAYERS = 16
LAYER_MACS = {2048: 2048 * (2048 + 512 + 512 + 2048 + 8192 + 8192), 8192: 8192 * 2048}
CLASSIFIER_MACS = {2048: 128256 * 2048}
PROMPT = 64
# the boards: (name, [(core label, cores, GHz)], DRAM GB/s usable)
BOARDS = [
    ('Pi 4 (4x A72 1.8 GHz, 4 GB/s)', [('A72', 4, 1.8)], 4.0),
    ('Pi 5 (4x A76 2.4 GHz, 10 GB/s)', [('A76 (N1 model)', 4, 2.4)], 10.0),
    ('RK3566 (4x A55 1.8 GHz, 3 GB/s)', [('A55', 4, 1.8)], 3.0),
    ('RK3588, 4 big (4x A76 2.4 GHz, 17 GB/s)', [('A76 (N1 model)', 4, 2.4)], 17.0),
    ('RK3588, all 8 (+4x A55 1.8 GHz)', [('A76 (N1 model)', 4, 2.4), ('A55', 4, 1.8)], 17.0),
]


class ToolError(Exception):
    pass


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise ToolError(f'{" ".join(map(str, cmd))[:200]}: exit {r.returncode}\n{r.stderr[-2000:]}')
    return r.stdout


def make_vars():
    """The Makefile's own aarch64 compiler, flags, kernel sources and libraries, as
    make prints them (so they are defined once, there)"""
    rule = 'armperf-vars:\n\t@echo "$(AARCH64_CC)|$(CFLAGS) $(BASE_CFLAGS)|$(KERNEL_SRCS)|$(LDLIBS)"\n'
    env = {k: v for k, v in os.environ.items() if k != 'MAKEFLAGS'}
    out = run(['make', '-s', '--no-print-directory', '-C', ROOT, '-f', 'Makefile', '-f', '-', 'armperf-vars'],
              input=rule, env=env).strip().splitlines()[-1]
    cc, flags, srcs, libs = out.split('|')
    return cc, flags, [os.path.join(ROOT, f) for f in srcs.split()], libs


def build(workdir, srcs, cc, flags, libs):
    exe = os.path.join(workdir, 'armperf_driver')
    dirs = [os.path.dirname(os.path.abspath(f)) for f in srcs] + [os.path.join(ROOT, 'src'), os.path.join(ROOT, 'src', 'kernels')]
    incs = [f'-I{d}' for d in dict.fromkeys(dirs) if os.path.isdir(d)]
    run([cc, *shlex.split(flags), *shlex.split(ARCH_FLAGS), *incs, DRIVER, *srcs, '-o', exe, *shlex.split(libs)])
    return exe, ' '.join([os.path.basename(cc), flags, ARCH_FLAGS])


def symbols(exe):
    out = {}
    for line in run([NM, exe]).splitlines():
        p = line.split()
        if len(p) == 3:
            out[p[2]] = int(p[0], 16)
    return out


def disassembly(exe):
    """address -> instruction text as llvm-objdump prints it (which llvm-mca reads)"""
    dis = {}
    for line in run([OBJDUMP, '-d', '--no-show-raw-insn', exe]).splitlines():
        m = re.match(r'\s*([0-9a-f]+):\s+(.*)$', line)
        if m:
            dis[int(m.group(1), 16)] = m.group(2).split('//')[0].strip()
    return dis


TB_INSN = re.compile(r'0x([0-9a-f]+):\s+[0-9a-f]{8}\s')
TB_EXEC = re.compile(r'Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/')


def executed(exe, args, syms, workdir):
    """addresses of the instructions executed between the two markers, in order"""
    begin, end = syms['armperf_begin'], syms['armperf_end']
    log = os.path.join(workdir, 'qemu.log')
    r = subprocess.run([QEMU, '-cpu', 'max', '-d', 'in_asm,exec,nochain', '-D', log, exe, *map(str, args)],
                       capture_output=True, text=True)
    if r.returncode:
        raise ToolError(f'driver {" ".join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}')
    blocks, cur, insns, inside = {}, None, [], False
    with open(log) as f:
        for line in f:
            m = TB_INSN.match(line)
            if m:
                a = int(m.group(1), 16)
                if cur is None:
                    cur = blocks[a] = []
                cur.append(a)
                continue
            cur = None
            m = TB_EXEC.match(line)
            if m:
                pc = int(m.group(1), 16)
                if pc == begin:
                    inside, insns = True, []
                elif pc == end and inside:
                    os.remove(log)
                    return insns
                elif inside:
                    insns.extend(blocks[pc])
    raise ToolError('the driver never called armperf_begin and then armperf_end')


def unit_of(insns, rows):
    """The repeated unit of a call over `rows` rows: for the largest N in UNITS whose
    first instruction executed exactly N times starts N - 1 identical sequences. Returns
    (addresses of one unit, rows per unit)."""
    count = collections.Counter(insns)
    for n in UNITS:
        head = next((a for a in insns if count[a] == n), None)
        if head is None:
            continue
        at = [i for i, a in enumerate(insns) if a == head]
        seqs = {tuple(insns[at[i]:at[i + 1]]) for i in range(n - 1)}
        if len(seqs) == 1:
            return list(seqs.pop()), rows // n
    raise ToolError(f'no repeated unit in the trace of {rows} rows')


BRANCH = re.compile(r'^(b\.\w+|b|bl|cbz|cbnz|tbz|tbnz)\s+(.*)$')


def assembly(addrs, dis):
    """the unit as llvm-mca input: every branch sent to the unit's top"""
    out = ['.Ltop:']
    for a in addrs:
        line = re.sub(r'\s*<[^>]*>', '', dis[a])
        m = BRANCH.match(line)
        if m:
            ops = [o.strip() for o in m.group(2).split(',')]
            ops[-1] = '.Ltop'
            line = m.group(1) + ' ' + ', '.join(ops)
        out.append(line)
    return '\n'.join(out) + '\n'


def mca(text, n_insns, cpu):
    """-> (cycles per unit, resource bound per unit)"""
    iters = max(1, MCA_INSNS // max(1, n_insns))
    o = run([MCA, '-mtriple=aarch64-linux-gnu', f'-mcpu={cpu}', '-mattr=+dotprod,+fullfp16',
             f'-iterations={iters}'], input=text)
    cycles = float(re.search(r'Total Cycles:\s+([\d.]+)', o).group(1)) / iters
    bound = float(re.search(r'Block RThroughput:\s+([\d.]+)', o).group(1))
    return cycles, bound


def measure(exe, syms, dis, workdir, kset, kind, ntok, cols, gs):
    """one shape: -> {core label: figures}"""
    insns = executed(exe, [kset, kind, ntok, ROWS, cols, gs], syms, workdir)
    unit, rows = unit_of(insns, ROWS)
    text = assembly(unit, dis)
    ng = (cols + gs - 1) // gs
    per_row = cols // 2 + 2 * ng * (2 if kind.startswith('q4a') else 1)
    wbytes, macs = rows * per_row, rows * cols * ntok
    res = {}
    for cpu, label, in_order in CORES[kset]:
        cyc, bound = mca(text, len(unit), cpu)
        res[label] = {'cpu': cpu, 'in_order': in_order, 'unit_rows': rows, 'unit_insns': len(unit),
                      'cycles': cyc, 'bound': bound, 'bytes': wbytes, 'macs': macs,
                      'bytes_per_cycle': wbytes / cyc, 'mac_per_cycle': macs / cyc,
                      'bytes_per_cycle_bound': wbytes / bound, 'mac_per_cycle_bound': macs / bound}
    return res


def fmt(f, key):
    v = f'{f[key]:.2f}'
    return v + (f' ({f[key + "_bound"]:.2f})' if f['in_order'] else '')


def table(results, mode, key, title):
    shapes = [(c, g) for c in WIDTHS for g in GROUPS]
    print(f'\n{title}\n')
    print('| core | set | kind | ' + ' | '.join(f'{c} g{g}' for c, g in shapes) + ' |')
    print('|---|---|---|' + '---|' * len(shapes))
    for kset, cores in CORES.items():
        for _, label, _ in cores:
            for kind, by_mode in results[kset].items():
                cells = [fmt(by_mode[mode][f'{c}/{g}'][label], key) for c, g in shapes]
                print(f'| {label} | {kset} | {kind} | ' + ' | '.join(cells) + ' |')


def per_core(results, mode, label, key, kind):
    """the g128 figure of core `label` by row width (the simulated one; the bound too
    for in-order cores)"""
    for kset, cores in CORES.items():
        for _, lab, in_order in cores:
            if lab == label:
                r = {c: results[kset][kind][mode][f'{c}/128'][label] for c in WIDTHS}
                sim = {c: r[c][key] for c in WIDTHS}
                return sim, ({c: r[c][key + '_bound'] for c in WIDTHS} if in_order else sim)
    raise KeyError(label)


def boards(results, kind):
    """Llama-3.2-1B (`kind` g128) tokens/s bounds per board, kernels only"""
    bpw = (128 // 2 + 2) / 128                       # weight bytes per weight at g128
    macs_tok = {c: LAYERS * LAYER_MACS.get(c, 0) + CLASSIFIER_MACS.get(c, 0) for c in WIDTHS}
    bytes_tok = sum(macs_tok.values()) * bpw
    macs_prompt = {c: PROMPT * LAYERS * LAYER_MACS.get(c, 0) + CLASSIFIER_MACS.get(c, 0) for c in WIDTHS}
    print(f'\nLlama-3.2-1B, {kind.upper()} g128: {sum(macs_tok.values()) / 1e9:.3f} G MAC and '
          f'{bytes_tok / 1e6:.1f} MB of weights per token. Predictions from the kernel figures '
          'above (all cores, perfect scaling, matmuls only); in-order cores as simulated-bound.\n')
    print('| board | decode: memory bound | decode: compute bound, all cores (1 core) | decode predicted | '
          f'prompt-{PROMPT}: compute bound | prompt-{PROMPT}: memory bound | prompt-{PROMPT} predicted |')
    print('|---|---|---|---|---|---|---|')
    out = []
    for name, groups, bw in BOARDS:
        mem = bw * 1e9 / bytes_tok
        pmem = PROMPT * bw * 1e9 / bytes_tok       # the weights streamed once per chunk
        rate = {}
        for which in (0, 1):                       # simulated, bound
            dec = pre = one = 0.0
            for label, cores, ghz in groups:
                b = per_core(results, 'decode', label, 'bytes_per_cycle', kind)[which]
                m = per_core(results, 'prompt', label, 'mac_per_cycle', kind)[which]
                cyc_tok = sum(macs_tok[c] * bpw / b[c] for c in WIDTHS)
                cyc_prompt = sum(macs_prompt[c] / m[c] for c in WIDTHS)
                dec += cores * ghz * 1e9 / cyc_tok
                pre += PROMPT * cores * ghz * 1e9 / cyc_prompt
                one = max(one, ghz * 1e9 / cyc_tok)
            rate[which] = (dec, one, pre)
        (d0, o0, p0), (d1, o1, p1) = rate[0], rate[1]
        rng = lambda a, b: f'{a:.1f}' if abs(a - b) < 0.05 else f'{a:.1f}-{b:.1f}'
        pred = lambda a, b, m: rng(min(a, m), min(b, m))
        print(f'| {name} | {mem:.1f} | {rng(d0, d1)} ({rng(o0, o1)}) | {pred(d0, d1, mem)}, '
              f'{"memory" if min(d0, d1) >= mem else "compute"} | {rng(p0, p1)} | {pmem:.0f} | '
              f'{pred(p0, p1, pmem)} |')
        out.append({'board': name, 'kind': kind, 'decode_memory': mem, 'decode_compute': [d0, d1], 'decode_one_core': [o0, o1],
                    'prompt_compute': [p0, p1], 'prompt_memory': pmem})
    return out


def main(argv=None):
    global WIDTHS, GROUPS
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--tokens', type=int, default=16, help='tokens per call for the prompt figures')
    ap.add_argument('--quick', action='store_true', help='only rows of 2048 at g128 (no board table)')
    ap.add_argument('--kinds', default='q4s,q4s_r4',
                    help='weight kinds, comma-separated: q4s, q4a, q4s_r4, q4a_r4 (the driver\'s)')
    ap.add_argument('--json', help='also write every figure to this file')
    ap.add_argument('--src', action='append', metavar='FILE.c',
                    help='kernel sources to build instead of the checkout\'s (repeat; for trying a change)')
    args = ap.parse_args(argv)
    if args.tokens < 2:
        ap.error('--tokens must be at least 2')
    if args.quick:
        WIDTHS, GROUPS = (2048,), (128,)
    kinds = [k for k in args.kinds.split(',') if k]
    if not kinds or any(k not in ('q4s', 'q4a', 'q4s_r4', 'q4a_r4') for k in kinds):
        ap.error('--kinds: a comma-separated list of q4s, q4a, q4s_r4, q4a_r4')
    tty = sys.stderr.isatty()
    try:
        cc, flags, srcs, libs = make_vars()
        for tool in (cc, QEMU, MCA, OBJDUMP, NM):
            if not shutil.which(tool):
                raise ToolError(f'{tool} not found (Debian: gcc-aarch64-linux-gnu qemu-user llvm-22)')
        with tempfile.TemporaryDirectory(prefix='armperf.') as tmp:
            exe, how = build(tmp, args.src or srcs, cc, flags, libs)
            syms, dis = symbols(exe), disassembly(exe)
            results = {}
            todo = [(k, q, m, c, g) for k in CORES for q in kinds for m in ('decode', 'prompt')
                    for c in WIDTHS for g in GROUPS]
            for i, (kset, kind, mode, cols, gs) in enumerate(todo):
                if tty:
                    print(f'\r[{i + 1}/{len(todo)}] {kset} {kind} {mode} {cols} g{gs}   ', end='',
                          file=sys.stderr, flush=True)
                ntok = 1 if mode == 'decode' else args.tokens
                results.setdefault(kset, {}).setdefault(kind, {}).setdefault(mode, {})[f'{cols}/{gs}'] = \
                    measure(exe, syms, dis, tmp, kset, kind, ntok, cols, gs)
            if tty:
                print('\r' + ' ' * 60 + '\r', end='', file=sys.stderr)
    except ToolError as e:
        sys.exit(f'armperf: {e}')
    rev = subprocess.run(['git', '-C', ROOT, 'log', '-1', '--format=%h'], capture_output=True, text=True).stdout.strip()
    print(f'armperf at {rev or "this checkout"}: {how}; {", ".join(kinds)}, llvm-mca '
          f'({os.path.basename(MCA)}); in-order cores: simulated (resource bound)')
    table(results, 'decode', 'bytes_per_cycle', 'Decode (1 token), weight bytes/cycle')
    table(results, 'decode', 'mac_per_cycle', 'Decode (1 token), MAC/cycle')
    table(results, 'prompt', 'mac_per_cycle', f'Prompt ({args.tokens} tokens per call), MAC/cycle')
    boards_out = None if args.quick else [b for k in kinds for b in boards(results, k)]
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'rev': rev, 'build': how, 'tokens': args.tokens, 'results': results, 'boards': boards_out},
                      f, indent=1)


if __name__ == '__main__':
    main()

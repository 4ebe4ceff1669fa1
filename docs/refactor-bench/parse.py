"""Before/after table from the criterion outputs in this folder: the median estimate of each
bench, every round, and after ÷ before of the fastest round of each side."""
import re, glob, collections, os
here = os.path.dirname(os.path.abspath(__file__))
def parse(f):
    out, name = {}, None
    for line in open(f):
        m = re.match(r'^Benchmarking (.*): Analyzing', line)
        if m:
            name = m.group(1)
        m = re.search(r'time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]', line)
        if m and name:
            v = float(m.group(1)) * {'s': 1e3, 'ms': 1, 'µs': 1e-3, 'ns': 1e-6}[m.group(2)]
            out[name] = v
            name = None
    return out
rows = collections.OrderedDict()
for f in sorted(glob.glob(os.path.join(here, '1*_*.txt'))):
    side = 'before' if 'before' in f else 'after'
    for k, v in parse(f).items():
        rows.setdefault(k, {'before': [], 'after': []})[side].append(v)
print('| bench | before (ee12bca), ms | after, ms | after ÷ before (fastest of each) |')
print('|---|--:|--:|--:|')
for k, d in rows.items():
    if d['before'] and d['after']:
        b, a = min(d['before']), min(d['after'])
        fmt = lambda xs: ' / '.join(f'{x:.4g}' for x in xs)
        print(f"| {k} | {fmt(d['before'])} | {fmt(d['after'])} | {a / b:.3f} |")

"""Draws docs/bf16/learning.svg: held-out bits/byte (and training loss) against steps for the
fp32 and bf16 runs of the nanoGPT CPU recipe, from their metrics (learning_{fp32,bf16}.jsonl:
every validation line and every 20th training line of each run's metrics.jsonl).
Run: python3 docs/bf16/plot_learning.py   (standard library only)."""
import json, math, os
here = os.path.dirname(os.path.abspath(__file__))
def load(p):
    val, train = [], []
    for line in open(os.path.join(here, f"learning_{p}.jsonl")):
        r = json.loads(line)
        if "val_bits_per_byte" in r: val.append((r["step"], r["val_bits_per_byte"]))
        if "train_loss" in r: train.append((r["step"], r["train_loss"] / math.log(2)))
    return val, train
runs = {p: load(p) for p in ("fp32", "bf16")}
W, H, L, R, T, B = 720, 420, 70, 20, 40, 50
xmax = max(s for v, _ in runs.values() for s, _ in v)
ys = [y for v, t in runs.values() for _, y in v + t]
ymin, ymax = math.floor(min(ys) * 2) / 2, 6.0
X = lambda s: L + (W - L - R) * s / xmax
Y = lambda y: T + (H - T - B) * (1 - (min(y, ymax) - ymin) / (ymax - ymin))
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="22" text-anchor="middle" font-size="14">nanoGPT CPU recipe on Shakespeare (L 4, C 128, T 64, B 12): fp32 and bf16</text>']
for i in range(int((ymax - ymin) * 2) + 1):
    y = ymin + i / 2
    out.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" stroke="#ddd"/><text x="{L-6}" y="{Y(y)+4:.1f}" text-anchor="end">{y:.1f}</text>')
for s in range(0, xmax + 1, 500):
    out.append(f'<text x="{X(s):.1f}" y="{H-B+18}" text-anchor="middle">{s}</text>')
out.append(f'<text x="{(W+L)/2}" y="{H-12}" text-anchor="middle">step</text>')
out.append(f'<text x="16" y="{(H-B+T)/2}" text-anchor="middle" transform="rotate(-90 16 {(H-B+T)/2})">bits/byte</text>')
style = {"fp32": ("#1f77b4", ""), "bf16": ("#d62728", ' stroke-dasharray="6 4"')}
for p, (val, train) in runs.items():
    color, dash = style[p]
    pts = " ".join(f"{X(s):.1f},{Y(y):.1f}" for s, y in train)
    out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-opacity="0.3" stroke-width="1"/>')
    pts = " ".join(f"{X(s):.1f},{Y(y):.1f}" for s, y in val)
    out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
for i, (p, (val, _)) in enumerate(runs.items()):
    color, dash = style[p]
    y0 = T + 20 + 18 * i
    out.append(f'<line x1="{W-370}" x2="{W-340}" y1="{y0}" y2="{y0}" stroke="{color}" stroke-width="2"{dash}/>'
               f'<text x="{W-334}" y="{y0+4}">{p}: held-out {val[-1][1]:.4f} bits/byte at step {val[-1][0]}</text>')
out.append(f'<text x="{W-370}" y="{T+20+18*2+4}" fill="#888">faint: training loss, bits/token</text>')
out.append("</svg>")
open(os.path.join(here, "learning.svg"), "w").write("\n".join(out))
print("wrote", os.path.join(here, "learning.svg"))

# The LSTM small preset (3 x 360, byte vocabulary) in PyTorch, trained as runner train does (AdamW 0.9/0.95,
# warmup 20 then cosine to lr/10, B=16, T=128, clipping), to check whether the unigram plateau is Lanes-specific.
# usage: torch_lstm.py LR CLIP STEPS FORGET_BIAS WEIGHT_DECAY   (validation: the first 4 batches of val_000000.bin)
import numpy as np, torch, math, sys, time
torch.set_num_threads(1); torch.manual_seed(0)
tr=np.fromfile('data/shakespeare/train_000000.bin',dtype=np.uint16,offset=1024).astype(np.int64)
va=np.fromfile('data/shakespeare/val_000000.bin',dtype=np.uint16,offset=1024).astype(np.int64)
V,H,L,B,T=257,360,3,16,128
lr=float(sys.argv[1]) if len(sys.argv)>1 else 3e-3
clip=float(sys.argv[2]) if len(sys.argv)>2 else 1.0
steps=int(sys.argv[3]) if len(sys.argv)>3 else 300
fb=float(sys.argv[4]) if len(sys.argv)>4 else 0.0
wd=float(sys.argv[5]) if len(sys.argv)>5 else 0.1
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.emb=torch.nn.Embedding(V,H); s.lstm=torch.nn.LSTM(H,H,L,batch_first=True); s.head=torch.nn.Linear(H,V)
    def forward(s,x): return s.head(s.lstm(s.emb(x))[0])
m=M()
with torch.no_grad():
    for n_,p_ in m.lstm.named_parameters():
        if 'bias_ih' in n_: p_[H:2*H]+=fb
opt=torch.optim.AdamW(m.parameters(),lr=lr,betas=(0.9,0.95),weight_decay=wd)
rng=np.random.default_rng(0)
def batch(d):
    ix=rng.integers(0,len(d)-T-1,B); x=np.stack([d[i:i+T] for i in ix]); y=np.stack([d[i+1:i+T+1] for i in ix]); return torch.tensor(x),torch.tensor(y)
def val():
    m.eval(); tot=0
    with torch.no_grad():
        for k in range(4):
            x=torch.tensor(va[k*B*T:(k+1)*B*T].reshape(B,T)); y=torch.tensor(va[k*B*T+1:(k+1)*B*T+1].reshape(B,T))
            tot+=torch.nn.functional.cross_entropy(m(x).reshape(-1,V),y.reshape(-1)).item()
    m.train(); return tot/4
t0=time.time()
for s in range(steps+1):
    if s%50==0: v=val(); print(s, 'val', round(v,4), 'bpb', round(v/math.log(2),3), round(time.time()-t0,1), flush=True)
    if s==steps: break
    w=20; g= lr*(s+1)/w if s<w else lr*0.1+0.5*(lr-lr*0.1)*(1+math.cos(math.pi*(s-w)/(steps-w)))
    for p in opt.param_groups: p['lr']=g
    x,y=batch(tr); loss=torch.nn.functional.cross_entropy(m(x).reshape(-1,V),y.reshape(-1))
    opt.zero_grad(); loss.backward(); n=torch.nn.utils.clip_grad_norm_(m.parameters(), clip if clip>0 else 1e9); opt.step()
    if s%50==0: print(' train',round(loss.item(),4),'gnorm',round(n.item(),3))

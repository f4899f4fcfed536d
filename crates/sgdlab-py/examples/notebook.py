"""The README's notebook-style example: a small torch model trained with sgdlab.torch.AdamW
and a warm-up + cosine schedule, then the lab's summary. Run by the test suite."""

import torch, sgdlab, sgdlab.torch

torch.manual_seed(0)
X = torch.randn(512, 8); y = (X[:, :2].sum(1) > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
opt = sgdlab.torch.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                         lr=1e-2, weight_decay=0.05)
sched = torch.optim.lr_scheduler.SequentialLR(opt, [
    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20),
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180)], milestones=[20])
for step in range(200):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(X), y)
    loss.backward()
    opt.step()
    sched.step()
print(f"loss {loss.item():.4f}, accuracy {(model(X).argmax(1) == y).float().mean():.3f}")

claims = sgdlab.verify(quick=True)
print(f"{sum(c['passed'] for c in claims)}/{len(claims)} claims pass")
for c in claims[:3]:
    print(c["id"], c["passed"], c["title"])

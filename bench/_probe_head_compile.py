import os, sys, time, json
import concurrent.futures as cf
mode = sys.argv[1]
if mode == "threefry_kernel":
    import jax; jax.config.update("jax_threefry_gpu_kernel_lowering", True)
import jax, numpy as np
sys.path.insert(0, ".")
from bt_jax.train import head
rng = np.random.default_rng(0)
N, D = 281, 2048
x = jax.device_put(rng.random((N, D), dtype=np.float32)); y = (rng.random(N) < .6).astype(np.float32)
folds = head.FoldArrays(*head.pad_index_sets([np.arange(209)] * 5), *head.pad_index_sets([np.arange(209, 251)] * 5))
shapes = [head.HeadHParams(units=u, batch_size=b, optimizer=o) for u in (64, 1024) for b in (16, 64) for o in ("adam", "sgd")]
t = time.time()
if mode == "parallel":
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda hp: jax.block_until_ready(head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(0)).val_acc_best), shapes))
else:
    for hp in shapes:
        head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(0))
t1 = time.time() - t
t = time.time()
for hp in shapes:
    head.fit_folds(x, y, folds, hp, jax.random.PRNGKey(1))
print(json.dumps({"mode": mode, "xla_flags": os.environ.get("XLA_FLAGS", ""), "first_8_shapes_s": round(t1, 2), "steady_8_s": round(time.time() - t, 3)}))

import assert from "node:assert/strict";
import { join } from "node:path";
import { Checkpoint } from "./checkpoint.ts";
import { ModelLoadError, UnsupportedModelError } from "./errors.ts";
import { encodeSafetensors, SafetensorsFile, type TensorData } from "./safetensors.ts";
import { planWeights, readWeightF32 } from "./weights.ts";

/** Copies fixture `arch` to a temp dir, lets `edit` change it, runs `fn`, and removes the dir. */
async function withFixtureCopy(
  arch: string,
  edit: (dir: string) => Promise<void>,
  fn: (dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-ckpt-" });
  try {
    for await (const e of Deno.readDir(`fixtures/models/${arch}`)) {
      if (e.isFile) await Deno.copyFile(`fixtures/models/${arch}/${e.name}`, join(dir, e.name));
    }
    await edit(dir);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function rewrite(path: string, change: (tensors: Record<string, TensorData>) => void) {
  const f = await SafetensorsFile.open(path);
  const tensors: Record<string, TensorData> = {};
  for (const [name, info] of f.tensors) {
    tensors[name] = { dtype: info.dtype, shape: [...info.shape], data: await f.read(name) };
  }
  f.close();
  change(tensors);
  await Deno.writeFile(path, encodeSafetensors(tensors));
}

Deno.test("Checkpoint opens single-file and sharded checkpoints and plans every weight", async () => {
  for (const arch of ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"]) {
    const ckpt = await Checkpoint.open(`fixtures/models/${arch}`);
    try {
      const plan = planWeights(ckpt);
      assert.equal(plan.layers.length, ckpt.config.numLayers);
      const gu = plan.layers[0].get("gate_up")!;
      assert.deepEqual(gu.shape, [
        ckpt.config.numExperts,
        2 * ckpt.config.expertIntermediateSize,
        ckpt.config.hiddenSize,
      ]);
      const values = await readWeightF32(ckpt, gu);
      assert.equal(values.length, gu.shape.reduce((a, b) => a * b, 1));
      assert.ok(values.every(Number.isFinite));
    } finally {
      ckpt.close();
    }
  }
});

Deno.test("Checkpoint errors name the missing file", async () => {
  await withFixtureCopy("olmoe", (d) => Deno.remove(join(d, "config.json")), async (dir) => {
    await assert.rejects(Checkpoint.open(dir), (e: unknown) => {
      assert.ok(e instanceof ModelLoadError);
      assert.equal(e.file, join(dir, "config.json"));
      assert.match(e.message, /does not exist/);
      return true;
    });
  });
  const removeWeights = async (d: string) => {
    await Deno.remove(join(d, "model.safetensors"));
    await Deno.remove(join(d, "golden.safetensors"));
  };
  await withFixtureCopy("olmoe", removeWeights, async (dir) => {
    await assert.rejects(Checkpoint.open(dir), /holds no model.safetensors/);
  });
  await withFixtureCopy(
    "mixtral",
    (d) => Deno.remove(join(d, "model-00003-of-00005.safetensors")),
    async (dir) => {
      await assert.rejects(Checkpoint.open(dir), (e: unknown) => {
        assert.ok(e instanceof ModelLoadError);
        assert.match(e.message, /model-00003-of-00005\.safetensors.*does not exist/);
        return true;
      });
    },
  );
});

Deno.test("Checkpoint errors name an unknown architecture and unsupported rope scaling", async () => {
  const edit = (change: (c: Record<string, unknown>) => void) => async (d: string) => {
    const c = JSON.parse(await Deno.readTextFile(join(d, "config.json")));
    change(c);
    await Deno.writeTextFile(join(d, "config.json"), JSON.stringify(c));
  };
  await withFixtureCopy("olmoe", edit((c) => c.model_type = "deepseek_v3"), async (dir) => {
    await assert.rejects(Checkpoint.open(dir), UnsupportedModelError);
  });
  await withFixtureCopy(
    "olmoe",
    edit((c) => c.rope_parameters = { rope_type: "longrope", rope_theta: 1e4 }),
    async (dir) => {
      await assert.rejects(Checkpoint.open(dir), /rope scaling .* is not supported/);
    },
  );
});

Deno.test("planWeights names the tensor whose shape does not fit the config, or that is missing", async () => {
  await withFixtureCopy(
    "olmoe",
    (d) =>
      rewrite(join(d, "model.safetensors"), (t) => {
        t["model.layers.1.self_attn.k_proj.weight"].shape = [64, 32];
      }),
    async (dir) => {
      const ckpt = await Checkpoint.open(dir);
      try {
        assert.throws(() => planWeights(ckpt), (e: unknown) => {
          assert.ok(e instanceof ModelLoadError);
          assert.equal(e.tensor, "model.layers.1.self_attn.k_proj.weight");
          assert.match(e.message, /shape is \[64,32\] but the config needs \[32,64\]/);
          return true;
        });
      } finally {
        ckpt.close();
      }
    },
  );
  await withFixtureCopy(
    "olmoe",
    (d) =>
      rewrite(join(d, "model.safetensors"), (t) => delete t["model.layers.2.mlp.experts.5.up_proj.weight"]),
    async (dir) => {
      const ckpt = await Checkpoint.open(dir);
      try {
        assert.throws(() => planWeights(ckpt), /model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight/);
      } finally {
        ckpt.close();
      }
    },
  );
});

Deno.test("planWeights reads transformers-5 fused expert tensors like per-expert ones", async () => {
  const ref = await Checkpoint.open("fixtures/models/olmoe");
  const refGu = await readWeightF32(ref, planWeights(ref).layers[0].get("gate_up")!);
  const refDown = await readWeightF32(ref, planWeights(ref).layers[0].get("down")!);
  ref.close();
  await withFixtureCopy(
    "olmoe",
    (d) =>
      rewrite(join(d, "model.safetensors"), (t) => {
        for (let l = 0; l < 3; l++) {
          const p = `model.layers.${l}.mlp.experts`;
          const gu: Uint8Array[] = [], dn: Uint8Array[] = [];
          for (let e = 0; e < 8; e++) {
            gu.push(t[`${p}.${e}.gate_proj.weight`].data, t[`${p}.${e}.up_proj.weight`].data);
            dn.push(t[`${p}.${e}.down_proj.weight`].data);
            for (const n of ["gate_proj", "up_proj", "down_proj"]) delete t[`${p}.${e}.${n}.weight`];
          }
          const cat = (parts: Uint8Array[]) => {
            const out = new Uint8Array(parts.reduce((a, b) => a + b.length, 0));
            let o = 0;
            for (const x of parts) out.set(x, o), o += x.length;
            return out;
          };
          t[`${p}.gate_up_proj`] = { dtype: "F32", shape: [8, 96, 64], data: cat(gu) };
          t[`${p}.down_proj`] = { dtype: "F32", shape: [8, 64, 48], data: cat(dn) };
        }
      }),
    async (dir) => {
      const ckpt = await Checkpoint.open(dir);
      try {
        const plan = planWeights(ckpt);
        assert.deepEqual(await readWeightF32(ckpt, plan.layers[0].get("gate_up")!), refGu);
        assert.deepEqual(await readWeightF32(ckpt, plan.layers[0].get("down")!), refDown);
      } finally {
        ckpt.close();
      }
    },
  );
});

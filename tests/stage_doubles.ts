/**
 * Small, real implementations of the pipeline's stage interfaces for tests: a retriever over an in-memory
 * array (word-overlap scoring), a compressor that keeps the leading share of each passage's words, and a gate
 * with a fixed probability. The LanceDB store, LLMLingua-2 and ExpertRAG are delivered elsewhere; these stand
 * in for them so the pipeline and the routes can be tested on their own.
 *
 * @module
 */

import type { Model } from "../engine/types.ts";
import type {
  CompressionResult,
  DocumentInput,
  GateDecision,
  Passage,
  PromptCompressor,
  RetrievalGate,
  Retriever,
} from "../pipeline.ts";

/** A retriever over an in-memory array: the score is the share of query words found in the document. */
export class MemoryRetriever implements Retriever {
  readonly docs = new Map<string, DocumentInput>();
  /** Queries received, in order. */
  readonly queries: string[] = [];
  /** When set, every call rejects with it. */
  failWith: Error | undefined;

  constructor(docs: DocumentInput[] = []) {
    for (const d of docs) this.docs.set(d.id, d);
  }

  search(query: string, o: { k: number }): Promise<Passage[]> {
    if (this.failWith) return Promise.reject(this.failWith);
    this.queries.push(query);
    const words = new Set(query.toLowerCase().match(/\p{L}+/gu) ?? []);
    const scored = [...this.docs.values()].map((d) => {
      const docWords = new Set(d.text.toLowerCase().match(/\p{L}+/gu) ?? []);
      const hits = [...words].filter((w) => docWords.has(w)).length;
      return {
        id: d.id,
        chunk: 0,
        text: d.text,
        score: words.size ? hits / words.size : 0,
        metadata: d.metadata,
      };
    });
    return Promise.resolve(scored.filter((s) => s.score > 0).sort((a, b) => b.score - a.score).slice(0, o.k));
  }

  add(docs: DocumentInput[]): Promise<{ documents: number }> {
    if (this.failWith) return Promise.reject(this.failWith);
    for (const d of docs) this.docs.set(d.id, d);
    return Promise.resolve({ documents: docs.length });
  }

  delete(ids: string[]): Promise<{ deleted: number }> {
    if (this.failWith) return Promise.reject(this.failWith);
    let n = 0;
    for (const id of ids) if (this.docs.delete(id)) n++;
    return Promise.resolve({ deleted: n });
  }
}

/** Keeps the first ceil(rate × n) words of each passage; counts words as tokens. */
export class HeadCompressor implements PromptCompressor {
  /** Calls received. */
  readonly calls: { contexts: string[]; rate: number }[] = [];

  compress(contexts: string[], o: { rate: number }): Promise<CompressionResult> {
    this.calls.push({ contexts, rate: o.rate });
    let origin = 0, kept = 0;
    const parts = contexts.map((c) => {
      const words = c.split(/\s+/).filter(Boolean);
      const keep = words.slice(0, Math.ceil(words.length * o.rate));
      origin += words.length;
      kept += keep.length;
      return keep.join(" ");
    });
    return Promise.resolve({
      text: parts.join("\n\n"),
      originTokens: origin,
      compressedTokens: kept,
      ratio: origin ? kept / origin : 1,
      rate: o.rate,
    });
  }
}

/** A gate that always answers `p` and retrieves when p >= 0.5. */
export class FixedGate implements RetrievalGate {
  /** Questions received. */
  readonly questions: string[] = [];

  constructor(readonly p: number) {}

  decide(_model: Model, question: string): Promise<GateDecision> {
    this.questions.push(question);
    return Promise.resolve({ p: this.p, retrieve: this.p >= 0.5, features: { fixed: this.p } });
  }
}

/** Wraps a real model and records the prompt ids of every `stream` call. */
export function recordingModel(model: Model): Model & { prompts: number[][] } {
  const prompts: number[][] = [];
  return new Proxy(model, {
    get(target, key) {
      if (key === "prompts") return prompts;
      if (key === "stream") {
        return (ids: readonly number[], o: unknown) => {
          prompts.push([...ids]);
          return target.stream(ids, o as Parameters<Model["stream"]>[1]);
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as Model & { prompts: number[][] };
}

/**
 * Retrieval: the LanceDB knowledge store (chunking, full-text, vector and hybrid search), the embedder, document
 * readers, the retrieval gate, and the LLMLingua-2 prompt compressor.
 *
 * These modules load native addons (LanceDB, onnxruntime-node) lazily, on first use.
 *
 * @module
 */

export {
  type AddResult,
  type DeleteResult,
  type KnowledgeStore,
  openStore,
  type OpenStoreOptions,
  type SearchHit,
  type SearchMode,
  type SearchOptions,
  type StoreCounts,
  type StoreDocument,
  type WriteOptions,
} from "./store.ts";
export { type Embedder, type EmbedderOptions, loadEmbedder, meanPool } from "./embedder.ts";
export {
  approxTokenCount,
  type Chunk,
  type ChunkOptions,
  chunkText,
  DEFAULT_CHUNK_TOKENS,
  DEFAULT_OVERLAP_TOKENS,
  splitSentences,
  type TokenCounter,
} from "./chunk.ts";
export { DEFAULT_RRF_K, type Fused, type FusionOptions, reciprocalRankFusion } from "./fusion.ts";
export { documentFileKind, parseJsonlLine, readDocuments } from "./documents.ts";
export { CommitConflictError, DocumentFormatError, EmbedderError, StoreError } from "./errors.ts";
export {
  entropyOfLogits,
  fitGate,
  type GateDecision,
  type GateExample,
  type GateFeatures,
  gateFeatures,
  type GateMode,
  type GateModel,
  gateProbability,
  readGate,
  RetrievalGate,
} from "./gate.ts";
export {
  compress,
  type CompressOptions,
  Compressor,
  type CompressResult,
  DEFAULT_COMPRESSOR_MODEL,
  loadCompressor,
  type LoadCompressorOptions,
} from "./compress.ts";
export {
  type ChunkLogits,
  type ClassifierBackend,
  type ClassifierDtype,
  CompressorLoadError,
  loadTokenClassifier,
  type NativeDevice,
  type TokenClassifier,
} from "./token_classifier.ts";
export {
  DEFAULT_DOCUMENTS,
  DEFAULT_INGEST_BATCH,
  defaultDbDir,
  edgemixHome,
  ensureIngested,
  type EnsureIngestedResult,
  ingestedMarker,
  ingestFile,
  type IngestFileOptions,
  type IngestFileResult,
} from "./knowledge_base.ts";

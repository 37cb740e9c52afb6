/**
 * The synthetic knowledge world: typed readers of the files `tools/world/generate.py` writes, the exact-match
 * rule of its questions, and the word-list helpers of its compressor labels.
 *
 * @module
 */

export {
  type CompressorExample,
  readWorld,
  readWorldDocuments,
  readWorldQuestions,
  type TrainQaPair,
  type World,
  WORLD_SPLITS,
  type WorldDocument,
  type WorldEntity,
  WorldFormatError,
  type WorldQuestion,
  type WorldSplit,
} from "./world.ts";
export { exactMatch, normalizeAnswer } from "./exact_match.ts";
export { containsPhrase, joinWords, keptText } from "./words.ts";

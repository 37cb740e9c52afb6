/**
 * Tokenizers of Hugging Face checkpoints: `tokenizer.json` run by `@huggingface/tokenizers`, special tokens
 * from `tokenizer_config.json`, and the chat template from `chat_template.jinja`, `chat_template.json` or
 * `tokenizer_config.json`.
 *
 * @module
 */

import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { ChatTemplateError, renderChatTemplate } from "./chat_template.ts";
import { ModelLoadError } from "./errors.ts";
import type { ChatMessage, ChatTemplateOptions, ModelTokenizer } from "./types.ts";

export { ChatTemplateError } from "./chat_template.ts";

/** A tokenizer file is missing, unreadable, not valid JSON, or describes a tokenizer that cannot be built. */
export class TokenizerLoadError extends ModelLoadError {
  /** The file the problem is in. */
  declare readonly file: string;

  /** Makes the error for `file`. */
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, { file, cause: options?.cause });
    this.name = "TokenizerLoadError";
  }
}

/** Options of {@linkcode loadTokenizer}. */
export interface LoadTokenizerOptions {
  /** Further ids that end generation, from the model's `config.json` and `generation_config.json`. */
  eosTokenIds?: readonly number[];
}

/** The contents of a checkpoint's tokenizer files, by file name; only `tokenizer.json` is required. */
export interface TokenizerFiles {
  /** The tokenizers library's description of the tokenizer. */
  "tokenizer.json": string;
  /** Special tokens, decoding options and possibly the chat template. */
  "tokenizer_config.json"?: string;
  /** The chat template, as transformers v5 saves it. */
  "chat_template.jinja"?: string;
  /** `{"chat_template": ...}`, as processors save it. */
  "chat_template.json"?: string;
}

type Json = Record<string, unknown>;

/** Special tokens of `tokenizer_config.json`, as the strings chat templates receive. */
interface SpecialTokens {
  bos: string | undefined;
  eos: string | undefined;
  unk: string | undefined;
  pad: string | undefined;
}

/** A Hugging Face tokenizer: `tokenizer.json` and `tokenizer_config.json` of a checkpoint, and its chat template. */
export class HfTokenizer implements ModelTokenizer {
  /** Number of ids the tokenizer can produce: the largest id of the model vocabulary or added tokens, plus 1. */
  readonly vocabSize: number;
  /** Id of `bos_token` of `tokenizer_config.json`, if it has one. */
  readonly bosTokenId: number | undefined;
  /** Id of `eos_token` of `tokenizer_config.json` and the ids passed to {@linkcode loadTokenizer}. */
  readonly eosTokenIds: readonly number[];
  /** The chat template source, if the checkpoint ships one. */
  readonly chatTemplate: string | undefined;
  readonly #tokenizer: Tokenizer;
  readonly #special: SpecialTokens;
  readonly #dir: string;

  /**
   * Builds the tokenizer from the contents of its files; `dir` is where they were read from and names them in
   * error messages. {@linkcode loadTokenizer} reads them from a directory.
   *
   * @throws {TokenizerLoadError} when a file is not valid JSON or does not describe a usable tokenizer.
   */
  constructor(dir: string, files: TokenizerFiles, options: LoadTokenizerOptions = {}) {
    const tokenizerFile = join(dir, "tokenizer.json");
    const tokenizerJson = parseJsonObject(files["tokenizer.json"], tokenizerFile);
    if (typeof tokenizerJson.model !== "object" || tokenizerJson.model === null) {
      throw new TokenizerLoadError(
        `Cannot load ${tokenizerFile}: it has no "model" object, so it is not a tokenizers file`,
        tokenizerFile,
      );
    }
    const configFile = join(dir, "tokenizer_config.json");
    const configText = files["tokenizer_config.json"];
    const config = configText === undefined ? {} : parseJsonObject(configText, configFile);
    const special: SpecialTokens = {
      bos: tokenString(config, "bos_token", configFile),
      eos: tokenString(config, "eos_token", configFile),
      unk: tokenString(config, "unk_token", configFile),
      pad: tokenString(config, "pad_token", configFile),
    };
    const extraEos = options.eosTokenIds ?? [];
    for (const id of extraEos) {
      if (!Number.isInteger(id) || id < 0) {
        throw new RangeError(`Cannot load the tokenizer: eos token id ${id} is not a non-negative integer`);
      }
    }
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tokenizerJson, {
        ...config,
        // transformers defaults to no clean-up of spaces before punctuation; the JS library to clean-up.
        clean_up_tokenization_spaces: config.clean_up_tokenization_spaces ?? false,
      });
    } catch (e) {
      throw new TokenizerLoadError(
        `Cannot load ${tokenizerFile}: the tokenizer could not be built (${errorText(e)})`,
        tokenizerFile,
        { cause: e },
      );
    }
    this.#tokenizer = tokenizer;
    this.#dir = dir;
    this.#special = special;
    this.vocabSize = vocabSizeOf(tokenizerJson);
    this.chatTemplate = chatTemplateOf(dir, files, config);
    // A token string missing from the vocabulary gives no id, as in transformers' convert_tokens_to_ids.
    this.bosTokenId = special.bos === undefined ? undefined : tokenizer.token_to_id(special.bos);
    const eos = special.eos === undefined ? undefined : tokenizer.token_to_id(special.eos);
    this.eosTokenIds = Object.freeze([...new Set([...(eos === undefined ? [] : [eos]), ...extraEos])]);
  }

  /** Whether the checkpoint ships a chat template. */
  get hasChatTemplate(): boolean {
    return this.chatTemplate !== undefined;
  }

  /** Token ids of `text`; the post-processor of `tokenizer.json` adds special tokens unless disabled. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const { ids } = this.#tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true });
    // Like the Rust tokenizers, drop pieces that map to no id (possible only without an unknown token).
    return ids.filter((id) => Number.isInteger(id));
  }

  /** Text of `ids`; special tokens are kept unless `skipSpecialTokens`; ids outside the vocabulary are skipped. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    const known: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0) {
        throw new RangeError(`Cannot decode the token ids: ${id} is not a non-negative integer`);
      }
      // The Rust tokenizers skip ids they do not know; the JS library would decode them as the unknown token.
      if (this.#tokenizer.id_to_token(id) !== undefined) known.push(id);
    }
    // The library rejects an empty list; Python returns "".
    if (known.length === 0) return "";
    return this.#tokenizer.decode(known, { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The prompt text the checkpoint's chat template renders for `messages`. */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === undefined) {
      throw new ChatTemplateError(
        `Cannot apply the chat template: the tokenizer in ${this.#dir} has none (no chat_template.jinja, ` +
          `no chat_template.json, and no chat_template field in tokenizer_config.json)`,
      );
    }
    const vars: Record<string, unknown> = {
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
    };
    const { bos, eos, unk, pad } = this.#special;
    if (bos !== undefined) vars.bos_token = bos;
    if (eos !== undefined) vars.eos_token = eos;
    if (unk !== undefined) vars.unk_token = unk;
    if (pad !== undefined) vars.pad_token = pad;
    if (options.tools !== undefined) vars.tools = options.tools;
    return renderChatTemplate(this.chatTemplate, { ...vars, ...options.extra });
  }
}

const TEMPLATE_FILES = ["chat_template.jinja", "chat_template.json"] as const;

/**
 * Loads the tokenizer of the checkpoint in `dir`: `tokenizer.json` (required), `tokenizer_config.json`
 * (optional) and the chat template; `eosTokenIds` adds the model's end-of-sequence ids to the tokenizer's.
 *
 * @throws {TokenizerLoadError} when a file is missing, unreadable, not valid JSON, or not a usable tokenizer.
 *
 * @example
 * ```ts
 * const tok = await loadTokenizer("fixtures/models/olmoe", { eosTokenIds: [0] });
 * tok.decode(tok.encode("Hello world")); // "Hello world"
 * ```
 */
export async function loadTokenizer(dir: string, options: LoadTokenizerOptions = {}): Promise<HfTokenizer> {
  const files: TokenizerFiles = {
    "tokenizer.json": await readRequiredText(join(dir, "tokenizer.json"), dir),
  };
  const config = await readOptionalText(join(dir, "tokenizer_config.json"));
  if (config !== undefined) files["tokenizer_config.json"] = config;
  // The first template file found wins, so later ones are not read.
  for (const name of TEMPLATE_FILES) {
    const text = await readOptionalText(join(dir, name));
    if (text !== undefined) {
      files[name] = text;
      break;
    }
  }
  return new HfTokenizer(dir, files, options);
}

/** The chat template: `chat_template.jinja`, then `chat_template.json`, then `tokenizer_config.json`. */
function chatTemplateOf(dir: string, files: TokenizerFiles, config: Json): string | undefined {
  const jinja = files["chat_template.jinja"];
  if (jinja !== undefined) return jinja;
  const jsonText = files["chat_template.json"];
  if (jsonText !== undefined) {
    const jsonFile = join(dir, "chat_template.json");
    const template = pickTemplate(parseJsonObject(jsonText, jsonFile).chat_template, jsonFile);
    if (template !== undefined) return template;
  }
  return pickTemplate(config.chat_template, join(dir, "tokenizer_config.json"));
}

/** A `chat_template` field: a string, or a list of `{name, template}` of which "default" (else the first). */
function pickTemplate(value: unknown, file: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.filter((t): t is { name: unknown; template: string } =>
      typeof t === "object" && t !== null && typeof t.template === "string"
    );
    if (named.length === value.length && named.length > 0) {
      return (named.find((t) => t.name === "default") ?? named[0]).template;
    }
  }
  throw new TokenizerLoadError(
    `Cannot read ${file}: "chat_template" must be a string or a list of {name, template} objects`,
    file,
  );
}

/** The content of a special-token field, which is a string or an object `{content: ...}`. */
function tokenString(config: Json, key: string, file: string): string | undefined {
  const value = config[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (typeof value === "object" && typeof (value as Json).content === "string") {
    return (value as Json).content as string;
  }
  throw new TokenizerLoadError(
    `Cannot read ${file}: "${key}" must be a string or an object with a "content" string`,
    file,
  );
}

/** Largest id of the model vocabulary or the added tokens, plus 1. */
function vocabSizeOf(json: Json): number {
  let max = -1;
  const vocab = (json.model as Json).vocab;
  if (Array.isArray(vocab)) {
    // Unigram: a list of [piece, score]; the id is the index.
    max = vocab.length - 1;
  } else if (typeof vocab === "object" && vocab !== null) {
    for (const id of Object.values(vocab)) {
      if (typeof id === "number" && id > max) max = id;
    }
  }
  if (Array.isArray(json.added_tokens)) {
    for (const token of json.added_tokens) {
      const id = (token as Json | null)?.id;
      if (typeof id === "number" && id > max) max = id;
    }
  }
  return max + 1;
}

/** The text of `file`, or undefined when it does not exist. */
async function readOptionalText(file: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new TokenizerLoadError(`Cannot read ${file}: ${errorText(e)}`, file, { cause: e });
  }
}

/** The text of `file` in `dir`; a missing file or directory is an error that names it. */
async function readRequiredText(file: string, dir: string): Promise<string> {
  const text = await readOptionalText(file);
  if (text !== undefined) return text;
  if (!(await exists(dir))) {
    throw new TokenizerLoadError(`Cannot load the tokenizer: the directory ${dir} does not exist`, file);
  }
  throw new TokenizerLoadError(`Cannot load the tokenizer: ${file} does not exist`, file);
}

/** `text` of `file` parsed as a JSON object. */
function parseJsonObject(text: string, file: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new TokenizerLoadError(`Cannot parse ${file}: it is not valid JSON (${errorText(e)})`, file, {
      cause: e,
    });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TokenizerLoadError(`Cannot read ${file}: it must hold a JSON object`, file);
  }
  return value as Json;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function errorText(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.replace(/\.$/, "");
}

/**
 * Chat templates: the Jinja templates of Hugging Face tokenizers that turn a list of chat messages into the
 * prompt text a model was trained on, rendered with `@huggingface/jinja` (which, like transformers, trims
 * blocks and strips their leading whitespace).
 *
 * @module
 */

import { Template } from "@huggingface/jinja";

/** A chat template is missing, does not parse, or raised an error while rendering. */
export class ChatTemplateError extends Error {
  /** Makes the error; `cause` is the underlying parser or runtime error, when there is one. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "ChatTemplateError";
  }
}

/** Compiled templates by source; a few entries, the least recently used dropped first. */
const cache = new Map<string, Template>();
const CACHE_SIZE = 16;

function compile(source: string): Template {
  const hit = cache.get(source);
  if (hit !== undefined) {
    // Re-insert to mark it as the most recently used.
    cache.delete(source);
    cache.set(source, hit);
    return hit;
  }
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    throw new ChatTemplateError(`Cannot parse the chat template: ${errorText(e)}`, { cause: e });
  }
  cache.set(source, template);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
  return template;
}

function errorText(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.replace(/\.$/, "");
}

/**
 * Renders the chat template `template` with the variables `vars` (`messages`, `add_generation_prompt`,
 * special tokens, ...); compiled templates are cached by source.
 *
 * @throws {ChatTemplateError} when the template does not parse or raises while rendering (for example through
 * `raise_exception`).
 *
 * @example
 * ```ts
 * const text = renderChatTemplate(
 *   "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
 *   { messages: [{ role: "user", content: "Hi" }] },
 * );
 * text; // "user: Hi\n"
 * ```
 */
export function renderChatTemplate(template: string, vars: Record<string, unknown>): string {
  const compiled = compile(template);
  try {
    return compiled.render(vars);
  } catch (e) {
    throw new ChatTemplateError(`Cannot render the chat template: ${errorText(e)}`, { cause: e });
  }
}

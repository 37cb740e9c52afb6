import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatTemplateError, renderChatTemplate } from "./chat_template.ts";
import { ChatTemplateError as ReexportedError, HfTokenizer, loadTokenizer } from "./tokenizer.ts";
import type { ChatMessage } from "./types.ts";

const FIXTURES = "fixtures/models";
const MODELS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"] as const;

interface ChatGolden {
  messages: ChatMessage[];
  rendered: string;
  rendered_no_generation_prompt: string;
}

for (const name of MODELS) {
  Deno.test(`${name}: the chat template renders as transformers does`, async () => {
    const dir = join(FIXTURES, name);
    const chat = JSON.parse(Deno.readTextFileSync(join(dir, "golden.json"))).chat as ChatGolden;
    const tok = await loadTokenizer(dir);
    assert.equal(tok.hasChatTemplate, true);
    assert.equal(tok.applyChatTemplate(chat.messages), chat.rendered);
    assert.equal(tok.applyChatTemplate(chat.messages, { addGenerationPrompt: true }), chat.rendered);
    assert.equal(
      tok.applyChatTemplate(chat.messages, { addGenerationPrompt: false }),
      chat.rendered_no_generation_prompt,
    );
  });
}

Deno.test("mixtral: the rendered prompt encodes without a second BOS when special tokens are off", async () => {
  const dir = join(FIXTURES, "mixtral");
  const chat = JSON.parse(Deno.readTextFileSync(join(dir, "golden.json"))).chat as ChatGolden;
  const tok = await loadTokenizer(dir);
  const ids = tok.encode(tok.applyChatTemplate(chat.messages), { addSpecialTokens: false });
  assert.equal(ids[0], 1);
  assert.notEqual(ids[1], 1);
});

Deno.test("renderChatTemplate passes variables, trims blocks like transformers, and caches by source", () => {
  // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one.
  const source =
    "{% for m in messages %}\n  {% if m.role %}{{ m.role }}: {{ m.content }};{% endif %}\n{% endfor %}";
  const messages = [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello" }];
  assert.equal(renderChatTemplate(source, { messages }), "user: Hi;assistant: Hello;");
  // Same source again (the compiled template is reused), different variables.
  assert.equal(renderChatTemplate(source, { messages: messages.slice(0, 1) }), "user: Hi;");
  // Indentation before an expression is kept, as in Jinja.
  assert.equal(renderChatTemplate("  {{ x }}", { x: 1 }), "  1");
  assert.equal(renderChatTemplate("{{ a }}-{{ b | upper }}", { a: 1, b: "x" }), "1-X");
});

Deno.test("renderChatTemplate: a template that does not parse is a ChatTemplateError", () => {
  assert.throws(
    () => renderChatTemplate("{% for m in messages %}{{ m }}", { messages: [] }),
    (e: unknown) => {
      assert.ok(e instanceof ChatTemplateError);
      assert.equal(e.name, "ChatTemplateError");
      assert.match(e.message, /^Cannot parse the chat template: .+[^.]$/);
      assert.ok(e.cause instanceof Error);
      return true;
    },
  );
});

Deno.test("renderChatTemplate: raise_exception in the template is a ChatTemplateError with its message", () => {
  const source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with " +
    "the user') }}{% endif %}ok";
  assert.equal(renderChatTemplate(source, { messages: [{ role: "user", content: "x" }] }), "ok");
  assert.throws(
    () => renderChatTemplate(source, { messages: [{ role: "system", content: "x" }] }),
    (e: unknown) => {
      assert.ok(e instanceof ChatTemplateError);
      assert.equal(e.message, "Cannot render the chat template: Conversations must start with the user");
      return true;
    },
  );
});

Deno.test("renderChatTemplate: a runtime error while rendering is a ChatTemplateError", () => {
  assert.throws(() => renderChatTemplate("{{ messages.content.upper() }}", { messages: 3 }), (e: unknown) => {
    assert.ok(e instanceof ChatTemplateError);
    assert.match(e.message, /^Cannot render the chat template: .+/);
    return true;
  });
});

const TOKENIZER_JSON = Deno.readTextFileSync(join(FIXTURES, "olmoe", "tokenizer.json"));
const CONFIG = JSON.parse(Deno.readTextFileSync(join(FIXTURES, "olmoe", "tokenizer_config.json")));
const MESSAGES: ChatMessage[] = [{ role: "user", content: "Hi" }];

Deno.test("no chat template: hasChatTemplate is false and applyChatTemplate throws ChatTemplateError", () => {
  const tok = new HfTokenizer("m", {
    "tokenizer.json": TOKENIZER_JSON,
    "tokenizer_config.json": JSON.stringify(CONFIG),
  });
  assert.equal(tok.hasChatTemplate, false);
  assert.throws(() => tok.applyChatTemplate(MESSAGES), (e: unknown) => {
    assert.ok(e instanceof ChatTemplateError);
    assert.ok(e instanceof ReexportedError);
    assert.match(e.message, /^Cannot apply the chat template: the tokenizer in m has none \(.+\)$/);
    return true;
  });
});

Deno.test("chat template sources: .jinja, then chat_template.json, then tokenizer_config.json", () => {
  const files = {
    "tokenizer.json": TOKENIZER_JSON,
    "tokenizer_config.json": JSON.stringify({ ...CONFIG, chat_template: "config" }),
  };
  assert.equal(new HfTokenizer("m", files).applyChatTemplate(MESSAGES), "config");
  assert.equal(
    new HfTokenizer("m", { ...files, "chat_template.json": JSON.stringify({ chat_template: "json" }) })
      .applyChatTemplate(MESSAGES),
    "json",
  );
  assert.equal(
    new HfTokenizer("m", {
      ...files,
      "chat_template.jinja": "jinja",
      "chat_template.json": JSON.stringify({ chat_template: "json" }),
    }).applyChatTemplate(MESSAGES),
    "jinja",
  );
  // A chat_template.json without the field falls back to tokenizer_config.json.
  assert.equal(
    new HfTokenizer("m", { ...files, "chat_template.json": "{}" }).applyChatTemplate(MESSAGES),
    "config",
  );
});

Deno.test("chat_template as a list of {name, template}: 'default', else the first", () => {
  const make = (list: unknown) =>
    new HfTokenizer("m", {
      "tokenizer.json": TOKENIZER_JSON,
      "tokenizer_config.json": JSON.stringify({ ...CONFIG, chat_template: list }),
    });
  const withDefault = [{ name: "tool_use", template: "tools" }, { name: "default", template: "default" }];
  assert.equal(make(withDefault).applyChatTemplate(MESSAGES), "default");
  assert.equal(
    make([{ name: "rag", template: "rag" }, { name: "x", template: "x" }]).applyChatTemplate(MESSAGES),
    "rag",
  );
  assert.equal(
    new HfTokenizer("m", {
      "tokenizer.json": TOKENIZER_JSON,
      "chat_template.json": JSON.stringify({ chat_template: withDefault }),
    }).applyChatTemplate(MESSAGES),
    "default",
  );
  for (const bad of [42, [], [{ name: "x" }]]) {
    assert.throws(() => make(bad), (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.equal(e.name, "TokenizerLoadError");
      assert.match(e.message, /^Cannot read m\/tokenizer_config\.json: "chat_template" must be/);
      return true;
    });
  }
  assert.throws(
    () => new HfTokenizer("m", { "tokenizer.json": TOKENIZER_JSON, "chat_template.json": "not json" }),
    (e: unknown) =>
      e instanceof Error && e.name === "TokenizerLoadError" && /chat_template\.json/.test(e.message),
  );
});

Deno.test("applyChatTemplate passes special tokens as strings, tools when given, and extra variables", () => {
  const template = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|" +
    "{{ tools is defined }}{% if tools is defined %}:{{ tools | length }}{% endif %}|{{ greeting }}|" +
    "{{ add_generation_prompt }}";
  const tok = new HfTokenizer("m", {
    "tokenizer.json": TOKENIZER_JSON,
    "tokenizer_config.json": JSON.stringify({
      bos_token: { content: "<|im_start|>" },
      eos_token: "<|endoftext|>",
      pad_token: { content: "<|endoftext|>", special: true },
      unk_token: null,
      chat_template: template,
    }),
  });
  assert.equal(tok.applyChatTemplate(MESSAGES), "<|im_start|>|<|endoftext|>||<|endoftext|>|false||true");
  assert.equal(
    tok.applyChatTemplate(MESSAGES, {
      addGenerationPrompt: false,
      tools: [{ type: "function" }, { type: "function" }],
      extra: { greeting: "hey" },
    }),
    "<|im_start|>|<|endoftext|>||<|endoftext|>|true:2|hey|false",
  );
});

Deno.test("applyChatTemplate: a template that raises is a ChatTemplateError", () => {
  const tok = new HfTokenizer("m", {
    "tokenizer.json": TOKENIZER_JSON,
    "chat_template.jinja":
      "{% if messages | length > 1 %}{{ raise_exception('Only one message is supported') }}" +
      "{% endif %}{{ messages[0].content }}",
  });
  assert.equal(tok.applyChatTemplate(MESSAGES), "Hi");
  assert.throws(() => tok.applyChatTemplate([...MESSAGES, ...MESSAGES]), (e: unknown) => {
    assert.ok(e instanceof ChatTemplateError);
    assert.equal(e.message, "Cannot render the chat template: Only one message is supported");
    return true;
  });
});

// Three turns of a conversation with the Vercel AI SDK's default OpenAI provider:
// `openai(model)` is the Responses API with `store: true`, so turns 2 and 3 send the
// earlier assistant turns as `item_reference`s to stored items. The base URL and key come
// from OPENAI_BASE_URL and OPENAI_API_KEY, as for any application using the default
// provider. Prints one JSON object: each turn's text, response id and the input item types
// the SDK sent (read from the requests themselves).
import { openai } from "@ai-sdk/openai";
import { generateText } from "ai";

const sent = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init) => {
  if (init && typeof init.body === "string") {
    sent.push({ url: String(url), body: JSON.parse(init.body) });
  }
  return realFetch(url, init);
};

const model = process.env.SWITCHBOARD_MODEL;
const messages = [];
const turns = [];
for (const question of ["Hello there", "Tell me more", "Thanks, goodbye"]) {
  messages.push({ role: "user", content: question });
  const before = sent.length;
  const result = await generateText({ model: openai(model), messages, maxRetries: 0 });
  messages.push(...result.response.messages);
  const request = sent[before];
  turns.push({
    text: result.text,
    response_id: result.response.id,
    url: request.url,
    store: request.body.store ?? null,
    input: request.body.input,
  });
}
process.stdout.write(JSON.stringify({ turns }) + "\n");

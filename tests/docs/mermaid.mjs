// Every Mermaid diagram of the given Markdown files must parse with
// Mermaid's own parser (the one GitHub renders them with), so a diagram
// cannot silently stop rendering:
//
//   node tests/docs/mermaid.mjs README.md docs/*.md
//
// Mermaid needs a DOM even to parse; jsdom provides one. Exits 1 naming
// each diagram that does not parse.
import fs from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tests/docs/mermaid.mjs FILE.md...");
  process.exit(2);
}
let diagrams = 0;
let failed = 0;
for (const file of files) {
  const text = fs.readFileSync(file, "utf8");
  for (const match of text.matchAll(/```mermaid\n([\s\S]*?)```/g)) {
    diagrams += 1;
    const line = text.slice(0, match.index).split("\n").length;
    try {
      await mermaid.parse(match[1]);
    } catch (error) {
      failed += 1;
      const reason = String(error?.message ?? error).split("\n").slice(0, 4).join(" | ");
      console.error(`${file}:${line}: the Mermaid diagram does not parse: ${reason}`);
    }
  }
}
console.log(`mermaid: ${diagrams} diagrams in ${files.length} files, ${failed} that do not parse`);
process.exit(failed === 0 ? 0 : 1);

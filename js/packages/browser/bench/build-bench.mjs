// Bundles the benchmark page (bench-page.ts: the browser node's ColaNode on the shipped browser
// environment, fed by drive-bench.mjs) into the folder given as the argument: bench.js,
// bench.html, and onnxruntime-web's .wasm/.mjs under ort/ (as scripts/build.mjs does for the
// real page). The benchmark builds it into a temporary folder: it is never part of dist-web/.
//
//   node build-bench.mjs <out folder>
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outArg = process.argv[2];
if (outArg === undefined) {
  process.stderr.write("usage: node build-bench.mjs <out folder>\n");
  process.exit(2);
}
const out = resolve(outArg);
mkdirSync(join(out, "ort"), { recursive: true });
await build({
  entryPoints: [join(here, "bench-page.ts")],
  outfile: join(out, "bench.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["chrome137"],
  minify: true, // as the shipped page.js: the same code the page runs
  sourcemap: true,
  logLevel: "warning",
});
copyFileSync(join(here, "bench.html"), join(out, "bench.html"));
const ortDist = dirname(createRequire(import.meta.url).resolve("onnxruntime-web/wasm"));
for (const name of readdirSync(ortDist)) {
  if (/^ort-wasm-simd-threaded\.(wasm|mjs)$/.test(name)) copyFileSync(join(ortDist, name), join(out, "ort", name));
}

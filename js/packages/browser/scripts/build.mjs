// Bundles the page into a folder of static files (dist-web/): page.js (the node and the core,
// with onnxruntime-web's WASM build), index.html, page.css, and onnxruntime-web's .wasm and
// .mjs files under ort/, served from the page's own origin (no CDN).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const out = join(here, "dist-web");
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "ort"), { recursive: true });
await build({
  entryPoints: [join(here, "src", "page.ts")],
  outfile: join(out, "page.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["chrome137", "firefox130", "safari17"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  logLevel: "warning",
});
for (const name of ["index.html", "page.css"]) copyFileSync(join(here, "static", name), join(out, name));
const ortDist = join(dirname(createRequire(import.meta.url).resolve("onnxruntime-web/wasm")));
for (const name of readdirSync(ortDist)) {
  if (/^ort-wasm-simd-threaded\.(wasm|mjs)$/.test(name)) copyFileSync(join(ortDist, name), join(out, "ort", name));
}

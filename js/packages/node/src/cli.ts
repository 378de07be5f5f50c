#!/usr/bin/env node
/** `cola-fed-node`: a cola-fed node for Node.js that joins a Flower 1.42 federation (see --help). */
import { createColaApp } from "./app.js";
import { runNodeProgram } from "./main.js";

runNodeProgram(process.argv.slice(2), createColaApp).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`cola-fed-node: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

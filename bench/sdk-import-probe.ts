// Run in a fresh node by the sdk-import benchmark (bench/sdk-import.ts): the time of
// `import('banger')`, which resolves to this package itself (its "exports") because this file lies
// inside it. The specifier is a variable so TypeScript does not resolve the package at build time.
const specifier = 'banger';
const t0 = performance.now();
await import(specifier);
process.stdout.write(`${performance.now() - t0}\n`);

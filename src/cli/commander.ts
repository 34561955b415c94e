import { createRequire } from 'node:module';

/**
 * commander's values, loaded with require: an ESM `import` of its CommonJS entry first has Node scan
 * the whole file for its export names (cjs-module-lexer), a cost every command line paid at start-up.
 * Types still come from `import type ... from 'commander'`.
 */
const commander = createRequire(import.meta.url)('commander') as typeof import('commander');

export const { Command, CommanderError, InvalidArgumentError } = commander;
export type Command = import('commander').Command;
export type CommanderError = import('commander').CommanderError;

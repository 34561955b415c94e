import type { Command } from 'commander';
export function registerVmCommands(_program: Command): void {}

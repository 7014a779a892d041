import { Command, CommanderError } from 'commander';
import { registerCheck } from './check.ts';
import { registerServe } from './serve.ts';
import { registerBuild } from './build.ts';
import { registerGc } from './gc.ts';
import { registerVm } from './vm.ts';
import { registerDemo } from './demo.ts';
import { registerDoctor } from './doctor.ts';
import { EXIT } from './common.ts';

const program = new Command('netboot')
  .description('Network-boot a fleet of diskless machines from one Docker image, each with its own top layer')
  .showHelpAfterError()
  .exitOverride();

registerServe(program);
registerCheck(program);
registerBuild(program);
registerGc(program);
registerVm(program);
registerDemo(program);
registerDoctor(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0 ? EXIT.ok : EXIT.usage);
  }
  process.stderr.write(`netboot: ${(err as Error).message}\n`);
  process.exit(EXIT.failure);
}

// Entry point of the NBD thread: loads the TypeScript module through tsx whether or not the
// process itself was started with `--import tsx` (a test runner's worker may not have been).
import { tsImport } from 'tsx/esm/api';

await tsImport('./thread-worker.ts', import.meta.url);

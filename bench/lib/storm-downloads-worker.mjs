// Entry point of a download thread (storm-downloads.ts): worker threads do not get
// the process's `--import tsx`, so the TypeScript module is loaded through tsx here.
import { tsImport } from 'tsx/esm/api';

await tsImport('./storm-downloads.ts', import.meta.url);

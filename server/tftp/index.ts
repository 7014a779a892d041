export { TftpServer, createTftpServer, type TftpServerOptions, type TransferEvent } from './server.ts';
export { TftpThread } from './thread.ts';
export {
  bufferFile,
  dirSource,
  generatedSource,
  ipxeSource,
  IPXE_BINARIES,
  memorySource,
  mountSources,
  normaliseTftpPath,
  onlyFiles,
  type TftpClient,
  type TftpFile,
  type TftpFileSource,
} from './files.ts';
export { defaultSessionLimits, type SessionLimits, type TransferOutcome } from './session.ts';

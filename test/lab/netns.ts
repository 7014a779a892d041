// The lab lives in server/lab/ because `netboot vm` and `netboot demo` use it too.
export * from '../../server/lab/netns.ts';

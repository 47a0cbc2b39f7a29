// Port and host come from the command line (--port N --strictPort --host 127.0.0.1).
export default {
  // The cache stays inside this copy of the app, never in the shared node_modules.
  cacheDir: '.vite',
  clearScreen: false,
  // No bare imports to pre-bundle; skip the dependency scan.
  optimizeDeps: { noDiscovery: true, include: [] },
};

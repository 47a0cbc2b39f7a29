// The test rewrites this file to check that the hot update arrives.
export const message = 'version 1';

/**
 * The node's own files, kept as the Python node keeps them (`cola_fed/wire/identity.py`):
 * folders 0700 and files 0600, written whole or not at all (a temporary file, fsynced, then
 * renamed), never through a symbolic link, and read back only when they are regular files of
 * this user that nobody else may write. A folder someone else could write into is refused: a
 * file found there could have been put there by anyone.
 */
import { closeSync, constants, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { ConfigError } from "@cola-fed/core";

/** Create `folder` (and its parents) 0700 if missing; refuse one that others may write into. */
export function ensurePrivateDir(folder: string): void {
  mkdirSync(folder, { recursive: true, mode: 0o700 });
  const info = lstatSync(folder);
  if (info.isSymbolicLink() || !info.isDirectory()) throw new ConfigError(`${folder} is not a folder (or is a link); refused`);
  if ((info.mode & 0o022) !== 0 || (typeof process.getuid === "function" && info.uid !== process.getuid())) {
    throw new ConfigError(`${folder} may be written by other users (mode ${(info.mode & 0o777).toString(8)}); `
      + `make it yours with 'chmod 700 ${folder}', or choose another folder`);
  }
}

/** Write `data` to `path` atomically, 0600, in a private folder. */
export function writePrivateFile(path: string, data: Uint8Array): void {
  ensurePrivateDir(dirname(path));
  const temp = join(dirname(path), `.${randomBytes(8).toString("hex")}.tmp`);
  const fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    let at = 0;
    while (at < data.length) at += writeSync(fd, data, at, data.length - at);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(temp);
    throw err;
  }
  closeSync(fd);
  renameSync(temp, path);
  const dirFd = openSync(dirname(path), constants.O_RDONLY);
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

/**
 * The bytes of `path`, or null when it does not exist. Refuses (ConfigError) a link, a file
 * that is not this user's, one that others may read or write (like ssh with a private key),
 * and one larger than `limit`.
 */
export function readPrivateFile(path: string, what: string, limit: number): Uint8Array | null {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO planted in the folder fails the type check below instead of blocking the open
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    if ((err as NodeJS.ErrnoException).code === "ELOOP") throw new ConfigError(`${what} ${path} is a symbolic link; refused`);
    throw err;
  }
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) throw new ConfigError(`${what} ${path} is not a regular file; refused`);
    if (typeof process.getuid === "function" && info.uid !== process.getuid()) {
      throw new ConfigError(`${what} ${path} belongs to another user; refused`);
    }
    if ((info.mode & 0o077) !== 0) {
      throw new ConfigError(`${what} ${path} has mode ${(info.mode & 0o777).toString(8)}; it must be 0600 `
        + `(run 'chmod 600 ${path}' if you wrote it yourself)`);
    }
    if (info.size > limit) throw new ConfigError(`${what} ${path} is ${info.size} bytes, above ${limit}; refused`);
    const out = new Uint8Array(info.size);
    let at = 0;
    while (at < out.length) {
      const got = readSync(fd, out, at, out.length - at, at);
      if (got === 0) break;
      at += got;
    }
    return out.subarray(0, at);
  } finally {
    closeSync(fd);
  }
}

/** Quote a string as one word for a POSIX shell (busybox sh included). */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

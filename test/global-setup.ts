import {execFileSync} from 'node:child_process'
import {existsSync, readdirSync, statSync} from 'node:fs'
import {join} from 'node:path'

/**
 * Make sure the CLI is built and the fixtures exist before any test runs.
 * (scripts/test.sh does both up front; this keeps a bare `npm test` honest.)
 */
export default function setup(): void {
  const root = join(import.meta.dirname, '..')
  const built = join(root, 'dist', 'commands', 'pack.js')
  if (!existsSync(built) || statSync(built).mtimeMs < newest(join(root, 'src')) || !existsSync(join(root, 'oclif.manifest.json'))) {
    execFileSync('npm', ['run', 'build', '--silent'], {cwd: root, stdio: 'inherit'})
  }
  if (!existsSync(join(root, 'test', '.cache', 'fixtures', '.complete'))) {
    execFileSync('bash', ['scripts/fixtures.sh'], {cwd: root, stdio: 'inherit'})
  }
}

/** The newest modification time of any file under `dir`. */
function newest(dir: string): number {
  let max = 0
  for (const e of readdirSync(dir, {withFileTypes: true, recursive: true})) {
    if (e.isFile()) max = Math.max(max, statSync(join(e.parentPath, e.name)).mtimeMs)
  }
  return max
}

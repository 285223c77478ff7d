/**
 * Container images made in the tests: OCI image layouts written with
 * tar-stream (gzip'd and plain layers), in the shape `skopeo copy … oci:DIR`
 * writes, plus hostile layers for the refusal tests.
 */
import {createHash} from 'node:crypto'
import {mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'

import {pack, type Header} from 'tar-stream'

export type Entry = Partial<Header> & {name: string; data?: Buffer | string}

/** A tar archive of `entries`, in order. */
export async function tarOf(entries: Entry[]): Promise<Buffer> {
  const p = pack()
  const chunks: Buffer[] = []
  p.on('data', (c: unknown) => chunks.push(c as Buffer))
  const ended = new Promise<void>((resolve, reject) => {
    p.on('end', () => resolve())
    p.on('error', reject)
  })
  for (const e of entries) {
    const {data, ...h} = e
    const header: Partial<Header> & {name: string} = {mode: h.type === 'directory' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: new Date(1_700_000_000_000), ...h}
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve())
      if (data !== undefined) p.entry(header, typeof data === 'string' ? Buffer.from(data) : data, cb)
      else p.entry(header, cb)
    })
  }
  p.finalize()
  await ended
  return Buffer.concat(chunks)
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

export interface LayoutImage {
  dir: string
  manifestDigest: string
  layerDigests: string[]
}

/** Write an OCI image layout at `dir` with these layers (gzip'd where asked) and image config. */
export async function writeLayout(dir: string, layers: {entries: Entry[]; gzip?: boolean}[], config: Record<string, unknown>, tag = 'latest'): Promise<LayoutImage> {
  mkdirSync(join(dir, 'blobs', 'sha256'), {recursive: true})
  const blob = (b: Buffer): string => {
    const d = sha(b)
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), b)
    return d
  }
  const layerDescs = []
  const diffIds = []
  for (const l of layers) {
    const tar = await tarOf(l.entries)
    diffIds.push(sha(tar))
    const bytes = l.gzip ? gzipSync(tar) : tar
    layerDescs.push({mediaType: `application/vnd.oci.image.layer.v1.tar${l.gzip ? '+gzip' : ''}`, digest: blob(bytes), size: bytes.length})
  }
  const cfg = Buffer.from(JSON.stringify({architecture: 'amd64', os: 'linux', rootfs: {type: 'layers', diff_ids: diffIds}, ...config}))
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {mediaType: 'application/vnd.oci.image.config.v1+json', digest: blob(cfg), size: cfg.length},
      layers: layerDescs,
    }),
  )
  const md = blob(manifest)
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({imageLayoutVersion: '1.0.0'}))
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: md, size: manifest.length, annotations: {'org.opencontainers.image.ref.name': tag}}],
    }),
  )
  return {dir, manifestDigest: md, layerDigests: layerDescs.map((l) => l.digest)}
}

const dir = (name: string, extra: Partial<Header> = {}): Entry => ({name, type: 'directory', ...extra})
const file = (name: string, data: string | Buffer, extra: Partial<Header> = {}): Entry => ({name, type: 'file', data, ...extra})
const sym = (name: string, linkname: string): Entry => ({name, type: 'symlink', linkname})

/** Applets the test entrypoint uses, as symlinks to busybox. */
const APPLETS = ['sh', 'id', 'stat', 'hostname', 'ls', 'tr', 'cat', 'pwd', 'getfattr']

/** What the entrypoint prints; the tests look for these lines on the console. */
export const ENTRY_SCRIPT = [
  'echo "greeting=$GREETING cwd=$(pwd) args=$#:$1|$2 user=$(id -u):$(id -g) home=$HOME host=$(hostname)"',
  "stat -c 'owned %u:%g %a' /home/app/owned.txt",
  "stat -c 'suid %u:%g %a' /usr/bin/setuidprog",
  "stat -c 'links %h' data.txt",
  'echo "opt: $(ls /opt/old | tr "\\n" " ")"',
  '[ -e /etc/doomed.txt ] && echo doomed-present || echo doomed-absent',
  'cat /lib/marker.txt',
  'exit 7',
].join('\n')

/**
 * The test image: three layers; a file deleted by a whiteout, an opaque
 * folder, a hard link, a setuid file, a file owned by uid 1000, a merged-/usr
 * symlink written through, an xattr; entrypoint + cmd print what the tests check.
 */
export async function writeTestImage(at: string, busybox = '/bin/busybox', user = 'app'): Promise<LayoutImage> {
  const bb = readFileSync(busybox)
  const layer1: Entry[] = [
    dir('bin'),
    file('bin/busybox', bb, {mode: 0o755}),
    ...APPLETS.map((a) => sym(`bin/${a}`, 'busybox')),
    dir('etc'),
    file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n'),
    file('etc/group', 'root:x:0:\napp:x:1000:\n'),
    file('etc/doomed.txt', 'this file is deleted by layer 2\n'),
    dir('opt'),
    dir('opt/old'),
    file('opt/old/a', 'a'),
    file('opt/old/b', 'b'),
    dir('usr'),
    dir('usr/bin'),
    dir('usr/lib'),
    file('usr/bin/setuidprog', '#!/bin/sh\necho setuid\n', {mode: 0o4755}),
    dir('home'),
    dir('home/app', {uid: 1000, gid: 1000, mode: 0o750}),
    file('home/app/owned.txt', 'mine\n', {uid: 1000, gid: 1000, mode: 0o640}),
    dir('srv'),
    dir('srv/app'),
    file('srv/app/data.txt', 'data\n'),
  ]
  const layer2: Entry[] = [
    dir('etc'),
    file('etc/.wh.doomed.txt', ''),
    dir('opt/old'),
    file('opt/old/.wh..wh..opq', ''),
    file('opt/old/c', 'c'),
    {name: 'srv/app/data-link.txt', type: 'link', linkname: 'srv/app/data.txt'},
    sym('lib', 'usr/lib'),
  ]
  const layer3: Entry[] = [
    // Written through the in-root symlink lib -> usr/lib (merged /usr).
    file('lib/marker.txt', 'marker through lib -> usr/lib\n'),
    file('srv/app/tagged.txt', 'x', {pax: {'SCHILY.xattr.user.ovm': 'hello-xattr'}} as Partial<Header>),
  ]
  return writeLayout(
    at,
    [{entries: layer1, gzip: true}, {entries: layer2}, {entries: layer3, gzip: true}],
    {
      config: {
        Env: ['PATH=/bin:/usr/bin', 'GREETING=hello from oci'],
        WorkingDir: '/srv/app',
        Entrypoint: ['/bin/sh', '-c', ENTRY_SCRIPT, 'entry'],
        Cmd: ['first', 'two words'],
        ExposedPorts: {'8080/tcp': {}},
        User: user,
        Labels: {'org.opencontainers.image.title': 'convert-test'},
      },
    },
    'v1',
  )
}

/** A one-layer image whose layer holds `entries` (for hostile layers). */
export async function writeHostileImage(at: string, layers: Entry[][]): Promise<LayoutImage> {
  return writeLayout(at, layers.map((entries) => ({entries})), {config: {Cmd: ['/bin/sh']}})
}

export {dir, file, sym}

/**
 * npm run bench -- convert: `ovm convert` (an OCI layout → a bare ext4 image)
 * against `mke2fs -d` run directly on the same, already flattened folder.
 *
 * Images: the test image of test/convert (three layers, busybox; whiteouts,
 * hard link, owners) and a bigger one: the host's /usr/lib/python3.* as one
 * gzip'd layer (thousands of files). For each: ovm's phases (flatten, mkfs),
 * the file system size ovm chose (content, no buffer) and the space it takes,
 * and mke2fs -d on the flattened folder at that size and at the smallest size
 * it accepts (found by halving), so the sizing overhead is visible.
 */
import {execFileSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {convertImage} from '../src/convert/convert.js'
import {flattenLayers} from '../src/convert/flatten.js'
import {openImage} from '../src/convert/source.js'
import {writeTestImage} from '../test/convert/image.js'

const MiB = 1024 * 1024

function allocated(path: string): number {
  return statSync(path).blocks * 512
}

function mke2fs(root: string, out: string, size: number): {ok: boolean; s: number} {
  rmSync(out, {force: true})
  execFileSync('truncate', ['-s', String(size), out])
  const t0 = performance.now()
  try {
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-m', '0', '-d', root, out], {stdio: 'ignore'})
    return {ok: true, s: (performance.now() - t0) / 1000}
  } catch {
    return {ok: false, s: (performance.now() - t0) / 1000}
  }
}

/** The smallest MiB size mke2fs -d accepts for `root` (bisection between lo and hi). */
function smallestMke2fs(root: string, out: string, hi: number): number {
  let lo = MiB
  while (hi - lo > MiB) {
    const mid = Math.floor((lo + hi) / 2 / MiB) * MiB
    if (mke2fs(root, out, mid).ok) hi = mid
    else lo = mid
  }
  return hi
}

async function one(label: string, layout: string, tmp: string): Promise<void> {
  const out = join(tmp, `${label}.ext4`)
  const r = await convertImage(undefined, {source: `oci:${layout}`, output: out, sizeBuffer: 0})
  // The same folder, flattened again, for mke2fs -d on its own.
  const root = join(tmp, `${label}-root`)
  await flattenLayers(root, (await openImage(`oci:${layout}`)).layers)
  const direct = join(tmp, `${label}-direct.ext4`)
  const same = mke2fs(root, direct, r.imageSize)
  const sameAlloc = same.ok ? allocated(direct) : 0
  const smallest = smallestMke2fs(root, join(tmp, `${label}-min.ext4`), r.imageSize * 2)
  const f = (n: number): string => `${(n / MiB).toFixed(1)} MiB`
  console.log(`convert ${label}: ${r.files} files, ${f(r.contentBytes)} of content`)
  console.log(`  ovm convert (oci layout → ext4): ${(r.ms.total / 1000).toFixed(2)} s  [flatten ${(r.ms.flatten / 1000).toFixed(2)} s, mkfs ${(r.ms.mkfs / 1000).toFixed(2)} s]`)
  console.log(`  mke2fs -d on the same folder:    ${same.s.toFixed(2)} s${same.ok ? '' : ' (failed at that size)'}`)
  console.log(`  file system size ovm chose:      ${f(r.imageSize)} (allocated ${f(allocated(out))}); mke2fs -d at that size allocates ${f(sameAlloc)}`)
  console.log(`  smallest size mke2fs -d accepts: ${f(smallest)}  → ovm's size / smallest = ${(r.imageSize / smallest).toFixed(2)}`)
  rmSync(root, {recursive: true, force: true})
}

export async function benchConvert(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'ovm-bench-convert-'))
  try {
    const img = join(tmp, 'test-image')
    await writeTestImage(img)
    await one('test-image', img, tmp)
    const py = readdirSync('/usr/lib').find((n) => /^python3\.\d+$/.test(n))
    if (py && existsSync(join('/usr/lib', py))) {
      const dir = join(tmp, 'py-layout')
      mkdirSync(dir)
      // One gzip'd layer made by GNU tar from the host folder (a real-world tree: many small files).
      const tar = join(tmp, 'py.tar')
      execFileSync('tar', ['-C', '/', '-cf', tar, `usr/lib/${py}`])
      await writeLayoutFromTar(dir, tar)
      await one(py, dir, tmp)
    }
  } finally {
    rmSync(tmp, {recursive: true, force: true})
  }
}

/** An OCI layout whose one layer is an existing tar file. */
async function writeLayoutFromTar(dir: string, tar: string): Promise<void> {
  const {createHash} = await import('node:crypto')
  const {readFileSync, writeFileSync} = await import('node:fs')
  const {gzipSync} = await import('node:zlib')
  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
  mkdirSync(join(dir, 'blobs', 'sha256'), {recursive: true})
  const blob = (b: Buffer): string => {
    const d = sha(b)
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), b)
    return d
  }
  const raw = readFileSync(tar)
  const gz = gzipSync(raw)
  const cfg = Buffer.from(JSON.stringify({architecture: 'amd64', os: 'linux', rootfs: {type: 'layers', diff_ids: [sha(raw)]}, config: {Cmd: ['/bin/sh']}}))
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {mediaType: 'application/vnd.oci.image.config.v1+json', digest: blob(cfg), size: cfg.length},
      layers: [{mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: blob(gz), size: gz.length}],
    }),
  )
  const md = blob(manifest)
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({imageLayoutVersion: '1.0.0'}))
  writeFileSync(join(dir, 'index.json'), JSON.stringify({schemaVersion: 2, manifests: [{mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: md, size: manifest.length}]}))
}

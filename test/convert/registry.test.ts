/**
 * Sources without a VM: Docker v2 schema 2 manifests and multi-platform
 * indexes, through Debian's docker-registry (pushed with skopeo) and from an
 * OCI layout; linux/amd64 is chosen, and an index without it is refused.
 */
import {execFile, execFileSync} from 'node:child_process'
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {convertImage} from '../../src/convert/convert.js'
import {sha256} from '../../src/oci/digest.js'
import {tempDir} from '../helpers/cli.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {file, writeHostileImage, writeTestImage} from './image.js'

const run = promisify(execFile)
const debugfs = (img: string, cmd: string): string => execFileSync('debugfs', ['-R', cmd, img], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']})

/** Turn the layout at `dir` into a two-platform index (tag `multi`): the test image as amd64, `other` as `otherPlatform`. */
function addIndex(dir: string, other: string, otherPlatform: {os: string; architecture: string}, amd64 = true): void {
  const idx = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'))
  const mine = idx.manifests[0]
  const theirs = JSON.parse(readFileSync(join(other, 'index.json'), 'utf8')).manifests[0]
  // copy the other image's blobs in
  execFileSync('sh', ['-c', `cp -n ${join(other, 'blobs/sha256')}/* ${join(dir, 'blobs/sha256')}/`])
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {mediaType: theirs.mediaType, digest: theirs.digest, size: theirs.size, platform: otherPlatform},
        ...(amd64 ? [{mediaType: mine.mediaType, digest: mine.digest, size: mine.size, platform: {os: 'linux', architecture: 'amd64'}}] : []),
      ],
    }),
  )
  const d = sha256(index)
  writeFileSync(join(dir, 'blobs/sha256', d.slice(7)), index)
  idx.manifests.push({mediaType: 'application/vnd.oci.image.index.v1+json', digest: d, size: index.length, annotations: {'org.opencontainers.image.ref.name': 'multi'}})
  writeFileSync(join(dir, 'index.json'), JSON.stringify(idx))
}

describe('indexes and Docker manifests', () => {
  const tmp = tempDir('ovm-convert-reg-')
  let registry: TestRegistry | undefined
  const img = join(tmp.path, 'img')
  beforeAll(async () => {
    await writeTestImage(img)
    await writeHostileImage(join(tmp.path, 'arm'), [[file('arm-only.txt', 'arm')]])
    addIndex(img, join(tmp.path, 'arm'), {os: 'linux', architecture: 'arm64'})
  })
  afterAll(async () => {
    await registry?.stop()
    tmp.cleanup()
  })

  const check = (out: string): void => {
    expect(debugfs(out, 'stat /home/app/owned.txt')).toMatch(/User:\s+1000\s+Group:\s+1000/)
    expect(debugfs(out, 'ls /')).not.toContain('arm-only.txt')
  }

  it('an OCI layout whose tag names an index: linux/amd64 is taken', async () => {
    const out = join(tmp.path, 'layout.ext4')
    const r = await convertImage(undefined, {source: `oci:${img}:multi`, output: out, sizeBuffer: 0})
    expect(r.whiteouts).toBe(2)
    check(out)
  })

  it('an index without linux/amd64 is refused, listing what it has', async () => {
    const only = join(tmp.path, 'only-arm')
    await writeHostileImage(only, [[file('x', 'x')]])
    addIndex(only, join(tmp.path, 'arm'), {os: 'linux', architecture: 'arm64'}, false)
    await expect(convertImage(undefined, {source: `oci:${only}:multi`, output: join(tmp.path, 'no.ext4')})).rejects.toMatchObject({
      code: 'IMAGE_NO_AMD64',
      message: expect.stringContaining('has no linux/amd64 image (it has: linux/arm64)'),
    })
  })

  it.skipIf(!registryAvailable())('from docker-registry: a multi-platform index (skopeo --all) and a Docker v2 schema 2 manifest', async () => {
    registry = await startRegistry()
    await run('skopeo', ['copy', '--quiet', '--all', '--dest-tls-verify=false', `oci:${img}:multi`, `docker://${registry.host}/convert/multi:1`])
    const out = join(tmp.path, 'multi.ext4')
    const r = await convertImage(undefined, {source: `docker://${registry.host}/convert/multi:1`, output: out, sizeBuffer: 0})
    expect(r.bootstrap.user).toBe('app')
    check(out)
    await run('skopeo', ['copy', '--quiet', '--format', 'v2s2', '--dest-tls-verify=false', `oci:${img}:v1`, `docker://${registry.host}/convert/docker:1`])
    const {stdout} = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/convert/docker:1`])
    expect(JSON.parse(stdout).mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json')
    const out2 = join(tmp.path, 'docker.ext4')
    const r2 = await convertImage(undefined, {source: `docker://${registry.host}/convert/docker:1`, output: out2, sizeBuffer: 0})
    expect(r2.whiteouts).toBe(2)
    check(out2)
  })
})

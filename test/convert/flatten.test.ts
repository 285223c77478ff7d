/**
 * Flattening and file systems without a VM: the test image's layers onto a
 * folder, its ext4 image read back with debugfs, hostile layers refused with
 * nothing left behind, the other sources (docker save) and file systems.
 */
import {execFileSync} from 'node:child_process'
import {existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {bootstrapFromImage, convertImage} from '../../src/convert/convert.js'
import {flattenLayers} from '../../src/convert/flatten.js'
import {makeFileSystem} from '../../src/convert/mkfs.js'
import {normalizeDockerReference, openImage, parseSource} from '../../src/convert/source.js'
import {ovm, tempDir} from '../helpers/cli.js'
import {dir, file, sym, writeHostileImage, writeTestImage} from './image.js'

const has = (tool: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], {stdio: 'ignore'})
    return true
  } catch {
    return false
  }
}

/** debugfs -R on an ext4 image. */
const debugfs = (img: string, cmd: string): string => execFileSync('debugfs', ['-R', cmd, img], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']})

describe('flattening the test image', () => {
  const tmp = tempDir('ovm-convert-')
  afterAll(() => tmp.cleanup())

  it('applies the layers in order: whiteouts, opaque folder, hard link, setuid, owners, in-root symlink', async () => {
    await writeTestImage(join(tmp.path, 'img'))
    const src = await openImage(`oci:${join(tmp.path, 'img')}:v1`)
    expect(src.layers).toHaveLength(3)
    const root = join(tmp.path, 'root')
    const r = await flattenLayers(root, src.layers)
    expect(r.whiteouts).toBe(2)
    expect(existsSync(join(root, 'etc/doomed.txt'))).toBe(false)
    expect(existsSync(join(root, 'etc/passwd'))).toBe(true)
    expect(readdirSync(join(root, 'opt/old')).sort()).toEqual(['c'])
    const data = statSync(join(root, 'srv/app/data.txt'))
    expect(data.nlink).toBe(2)
    expect(statSync(join(root, 'srv/app/data-link.txt')).ino).toBe(data.ino)
    expect(statSync(join(root, 'usr/bin/setuidprog')).mode & 0o7777).toBe(0o4755)
    const owned = statSync(join(root, 'home/app/owned.txt'))
    if (process.getuid?.() === 0) {
      expect([owned.uid, owned.gid]).toEqual([1000, 1000])
      expect(r.owners).toEqual([])
    } else {
      expect(r.owners).toContainEqual({path: '/home/app/owned.txt', uid: 1000, gid: 1000})
    }
    expect(owned.mode & 0o777).toBe(0o640)
    expect(statSync(join(root, 'home/app')).mode & 0o777).toBe(0o750)
    expect(readlinkSync(join(root, 'lib'))).toBe('usr/lib')
    expect(readFileSync(join(root, 'usr/lib/marker.txt'), 'utf8')).toContain('marker')
    expect(r.xattrs).toContainEqual({path: '/srv/app/tagged.txt', name: 'user.ovm', value: Buffer.from('hello-xattr')})
    // mtimes come from the layers
    expect(statSync(join(root, 'srv/app/data.txt')).mtimeMs).toBe(1_700_000_000_000)
  })

  it('makes an ext4 image that keeps owners, modes, links and xattrs, sized to the content plus the buffer', async () => {
    const img = join(tmp.path, 'root.ext4')
    const work = join(tmp.path, 'work')
    mkdirSync(work)
    const r = await makeFileSystem(join(tmp.path, 'root'), img, work, {fs: 'ext4', sizeBuffer: 8 * 1024 * 1024, xattrs: [{path: '/srv/app/tagged.txt', name: 'user.ovm', value: Buffer.from('hello-xattr')}]})
    expect(r.size).toBe((r.contentSize as number) + 8 * 1024 * 1024)
    expect(statSync(img).size).toBe(r.size)
    expect(debugfs(img, 'stat /home/app/owned.txt')).toMatch(/User:\s+1000\s+Group:\s+1000/)
    expect(debugfs(img, 'stat /home/app/owned.txt')).toMatch(/Mode:\s+0640/)
    expect(debugfs(img, 'stat /usr/bin/setuidprog')).toMatch(/Mode:\s+04755/)
    expect(debugfs(img, 'stat /srv/app/data.txt')).toMatch(/Links:\s+2/)
    expect(debugfs(img, 'ea_get /srv/app/tagged.txt user.ovm')).toContain('hello-xattr')
    expect(debugfs(img, 'ls /etc')).not.toContain('doomed')
    execFileSync('e2fsck', ['-fn', img], {stdio: 'ignore'})
  })

  it('sets owners with debugfs when the folder could not be chowned (not root)', async () => {
    const src = await openImage(`oci:${join(tmp.path, 'img')}:v1`)
    const root = join(tmp.path, 'root-nochown')
    const r = await flattenLayers(root, src.layers, {chown: false})
    expect(r.owners).toContainEqual({path: '/home/app/owned.txt', uid: 1000, gid: 1000})
    const work = join(tmp.path, 'work2')
    mkdirSync(work)
    const img = join(tmp.path, 'nochown.ext4')
    await makeFileSystem(root, img, work, {fs: 'ext4', sizeBuffer: 0, owners: r.owners})
    expect(debugfs(img, 'stat /home/app/owned.txt')).toMatch(/User:\s+1000\s+Group:\s+1000/)
    expect(debugfs(img, 'stat /home/app')).toMatch(/User:\s+1000\s+Group:\s+1000/)
    expect(debugfs(img, 'stat /home/app/owned.txt')).toMatch(/Mode:\s+0640/)
  })

  it('--size smaller than the content is refused with the size it needs', async () => {
    await expect(makeFileSystem(join(tmp.path, 'root'), join(tmp.path, 'small.ext4'), join(tmp.path, 'work'), {fs: 'ext4', size: 1024 * 1024})).rejects.toMatchObject({
      code: 'SIZE_TOO_SMALL',
      message: expect.stringMatching(/smaller than the image's content needs \(about \d+M\)/),
    })
  })

  it.skipIf(!has('mkfs.erofs'))('makes an erofs image that keeps owners and modes', async () => {
    const img = join(tmp.path, 'root.erofs')
    const r = await makeFileSystem(join(tmp.path, 'root'), img, join(tmp.path, 'work'), {fs: 'erofs'})
    expect(r.size).toBeGreaterThan(0)
    const dump = execFileSync('dump.erofs', ['--path=/home/app/owned.txt', img], {encoding: 'utf8'})
    expect(dump).toMatch(/Uid:\s*1000/)
  })

  it.skipIf(!has('mksquashfs'))('makes a squashfs image that keeps owners and modes', async () => {
    const img = join(tmp.path, 'root.sqfs')
    await makeFileSystem(join(tmp.path, 'root'), img, join(tmp.path, 'work'), {fs: 'squashfs'})
    const list = execFileSync('unsquashfs', ['-lln', img], {encoding: 'utf8'})
    expect(list).toMatch(/-rw-r----- 1000\/1000\s+5 .*squashfs-root\/home\/app\/owned.txt/)
    expect(list).toMatch(/-rwsr-xr-x 0\/0 .*squashfs-root\/usr\/bin\/setuidprog/)
  })
})

describe('hostile layers are refused, naming the layer and entry, and leave nothing behind', () => {
  const tmp = tempDir('ovm-hostile-')
  afterAll(() => tmp.cleanup())

  const cases: {name: string; layers: Parameters<typeof writeHostileImage>[1]; message: RegExp}[] = [
    {name: 'path traversal', layers: [[dir('etc'), file('etc/../../escaped.txt', 'x')]], message: /layer 1 \([0-9a-f]{12}\): entry "etc\/\.\.\/\.\.\/escaped.txt" has a "\.\." component/},
    {name: 'absolute name', layers: [[file('/abs.txt', 'x')]], message: /entry "\/abs.txt" has an absolute name/},
    {
      name: 'a symlink out, then a file written through it',
      layers: [[sym('out', '../../../../../../tmp')], [file('out/ovm-escaped-through-link.txt', 'x')]],
      message: /layer 2 \([0-9a-f]{12}\): entry "out\/ovm-escaped-through-link.txt" is written through the symlink \/out -> \.\.\/\.\.\/\.\.\/\.\.\/\.\.\/\.\.\/tmp, which points outside the root/,
    },
    {name: 'a device node', layers: [[dir('dev'), {name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0}]], message: /entry "dev\/sda" is a block device node \(8:0\)/},
    {name: 'a hard link out', layers: [[{name: 'h', type: 'link', linkname: '../../etc/passwd'}]], message: /entry "h" is a hard link to "\.\.\/\.\.\/etc\/passwd", which leaves the root/},
  ]

  for (const c of cases) {
    it(c.name, async () => {
      const home = join(tmp.path, `home-${cases.indexOf(c)}`)
      const img = join(tmp.path, `img-${cases.indexOf(c)}`)
      await writeHostileImage(img, c.layers)
      const out = join(tmp.path, `out-${cases.indexOf(c)}.ext4`)
      const scratch = join(tmp.path, `tmp-${cases.indexOf(c)}`)
      mkdirSync(scratch)
      const r = await ovm(['convert', `oci:${img}`, '--output', out], {home, cwd: tmp.path, env: {TMPDIR: scratch}})
      expect(r.code, r.stderr).toBe(3)
      expect(r.stderr).toMatch(c.message)
      expect(r.stderr).toContain('nothing was written')
      expect(existsSync(out)).toBe(false)
      expect(readdirSync(tmp.path).filter((n) => n.startsWith('.out-'))).toEqual([])
      expect(existsSync('/tmp/ovm-escaped-through-link.txt')).toBe(false)
      expect(existsSync('/escaped.txt')).toBe(false)
      // the flattening folder is gone too
      expect(readdirSync(scratch)).toEqual([])
    })
  }

  it('the artifact form leaves no temp folder in the store and no tag', async () => {
    const home = join(tmp.path, 'home-art')
    const img = join(tmp.path, 'img-art')
    await writeHostileImage(img, [[sym('out', '../../../../../../tmp')], [file('out/ovm-escaped-through-link.txt', 'x')]])
    const r = await ovm(['kernel', 'import', join(process.env.OVM_FIXTURES ?? join(import.meta.dirname, '..', '.cache', 'fixtures'), 'kernel-root'), '-t', 'test/kernel:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    const c = await ovm(['convert', `oci:${img}`, '-t', 'x/hostile:1', '--kernel', 'test/kernel:1'], {home})
    expect(c.code, c.stderr).toBe(3)
    expect(c.stderr).toMatch(/points outside the root/)
    expect(readdirSync(join(home, 'cache')).filter((n) => n.startsWith('convert-'))).toEqual([])
    const ls = await ovm(['ls', '--json'], {home})
    expect(ls.stdout).not.toContain('x/hostile')
    expect(existsSync('/tmp/ovm-escaped-through-link.txt')).toBe(false)
  })

  it('an absolute symlink counts from the image root: a write through it stays inside', async () => {
    const img = join(tmp.path, 'img-abs')
    await writeHostileImage(img, [[dir('tmp'), sym('abs', '/tmp')], [file('abs/inside.txt', 'x')]])
    const src = await openImage(`oci:${img}`)
    const root = join(tmp.path, 'root-abs')
    await flattenLayers(root, src.layers)
    expect(readFileSync(join(root, 'tmp/inside.txt'), 'utf8')).toBe('x')
    expect(existsSync('/tmp/inside.txt') && lstatSync('/tmp/inside.txt').mtimeMs > Date.now() - 60_000).toBe(false)
  })
})

describe('sources and the bootstrap config', () => {
  const tmp = tempDir('ovm-sources-')
  afterAll(() => tmp.cleanup())

  it('names: docker:// expands Docker Hub names; oci: takes an optional tag', () => {
    expect(normalizeDockerReference('alpine')).toBe('docker.io/library/alpine:latest')
    expect(normalizeDockerReference('localhost:5000/app:1')).toBe('localhost:5000/app:1')
    expect(parseSource('docker://user/app:2')).toEqual({kind: 'docker', target: 'docker.io/user/app:2'})
    expect(parseSource('oci:/a/b:v1')).toEqual({kind: 'oci', target: '/a/b', tag: 'v1'})
    expect(parseSource('oci:./img')).toEqual({kind: 'oci', target: './img'})
    expect(parseSource('docker-archive:x.tar')).toEqual({kind: 'docker-archive', target: 'x.tar'})
  })

  it('maps the image config to the bootstrap config', () => {
    const {bootstrap, dropped} = bootstrapFromImage({
      config: {Env: ['A=1', 'BROKEN'], WorkingDir: '/w', Entrypoint: ['/e'], Cmd: ['c'], ExposedPorts: {'80/tcp': {}, '9/sctp': {}}, User: '1000:1000'},
    })
    expect(bootstrap).toEqual({env: ['A=1'], workdir: '/w', entrypoint: ['/e'], cmd: ['c'], exposedPorts: ['80/tcp'], user: '1000:1000', profile: 'ovms-init'})
    expect(dropped).toEqual(['Env "BROKEN"', 'ExposedPorts 9/sctp'])
  })

  it('reads a docker save tarball (legacy form) and converts it to a bare image', async () => {
    const img = await writeTestImage(join(tmp.path, 'img'))
    // Re-shape the OCI layout as `docker save` writes it: manifest.json, <hex>.json, <id>/layer.tar (uncompressed).
    const save = join(tmp.path, 'save')
    mkdirSync(save)
    const index = JSON.parse(readFileSync(join(img.dir, 'index.json'), 'utf8'))
    const manifest = JSON.parse(readFileSync(join(img.dir, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'))
    const cfgHex = manifest.config.digest.slice(7)
    writeFileSync(join(save, `${cfgHex}.json`), readFileSync(join(img.dir, 'blobs/sha256', cfgHex)))
    const layers: string[] = []
    for (const [i, l] of manifest.layers.entries()) {
      const id = `${String(i).repeat(64)}`.slice(0, 64)
      mkdirSync(join(save, id))
      execFileSync('sh', ['-c', `gzip -dc -f < ${join(img.dir, 'blobs/sha256', l.digest.slice(7))} > ${join(save, id, 'layer.tar')}`])
      layers.push(`${id}/layer.tar`)
    }
    writeFileSync(join(save, 'manifest.json'), JSON.stringify([{Config: `${cfgHex}.json`, RepoTags: ['test/app:1'], Layers: layers}]))
    const tar = join(tmp.path, 'app.tar')
    execFileSync('tar', ['-cf', tar, '-C', save, '.'])
    const out = join(tmp.path, 'app.ext4')
    const r = await convertImage(undefined, {source: `docker-archive:${tar}`, output: out, sizeBuffer: 0})
    expect(r.source).toContain('test/app:1')
    expect(r.whiteouts).toBe(2)
    expect(r.bootstrap.user).toBe('app')
    expect(debugfs(out, 'stat /home/app/owned.txt')).toMatch(/User:\s+1000\s+Group:\s+1000/)
    expect(debugfs(out, 'ls /opt/old')).not.toMatch(/\ba\b/)
    expect(readdirSync(tmp.path).filter((n) => n.startsWith('.app.ext4'))).toEqual([])
  })

  it('reads a docker save tarball in its OCI form (Docker 25+: blobs/sha256 named in manifest.json, checked by digest)', async () => {
    const img = await writeTestImage(join(tmp.path, 'img-ocisave'))
    const index = JSON.parse(readFileSync(join(img.dir, 'index.json'), 'utf8'))
    const manifest = JSON.parse(readFileSync(join(img.dir, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'))
    writeFileSync(
      join(img.dir, 'manifest.json'),
      JSON.stringify([{Config: `blobs/sha256/${manifest.config.digest.slice(7)}`, RepoTags: ['test/oci-save:1'], Layers: manifest.layers.map((l: {digest: string}) => `blobs/sha256/${l.digest.slice(7)}`)}]),
    )
    const tar = join(tmp.path, 'oci-save.tar')
    execFileSync('tar', ['-cf', tar, '-C', img.dir, '.'])
    const out = join(tmp.path, 'oci-save.ext4')
    const r = await convertImage(undefined, {source: tar, output: out, sizeBuffer: 0})
    expect(r.source).toBe(`docker-archive:${tar} (test/oci-save:1)`)
    expect(debugfs(out, 'stat /usr/bin/setuidprog')).toMatch(/Mode:\s+04755/)
    // a changed layer inside the tarball is caught by its digest
    const victim = join(img.dir, 'blobs/sha256', img.layerDigests[1]!.slice(7))
    const b = readFileSync(victim)
    b[600] = b[600]! ^ 0xff
    writeFileSync(victim, b)
    execFileSync('tar', ['-cf', tar, '-C', img.dir, '.'])
    await expect(convertImage(undefined, {source: tar, output: join(tmp.path, 'bad2.ext4')})).rejects.toMatchObject({code: 'DIGEST_MISMATCH'})
  })

  it('ovm run takes a command only after --', async () => {
    const r = await ovm(['run', 'x/y:1', 'ls'], {home: join(tmp.path, 'home-run')})
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('Put the command after --, e.g. ovm run REF -- ls -l /.')
  })

  it('a damaged layer blob is refused by digest', async () => {
    const img = await writeTestImage(join(tmp.path, 'img2'))
    const victim = join(img.dir, 'blobs/sha256', img.layerDigests[1]!.slice(7))
    const b = readFileSync(victim)
    b[600] = b[600]! ^ 0xff
    writeFileSync(victim, b)
    await expect(convertImage(undefined, {source: `oci:${img.dir}`, output: join(tmp.path, 'bad.ext4')})).rejects.toMatchObject({code: 'DIGEST_MISMATCH'})
    expect(existsSync(join(tmp.path, 'bad.ext4'))).toBe(false)
  })

  it('-t without --kernel or $OVM_KERNEL says what to do, before fetching anything', async () => {
    const home = join(tmp.path, 'home')
    const r = await ovm(['convert', 'oci:/nonexistent', '-t', 'x/y:1'], {home, env: {OVM_KERNEL: ''}})
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('an artifact needs a kernel, and none was given (--kernel) or configured ($OVM_KERNEL)')
    expect(r.stderr).toContain('ovm kernel import')
  })
})

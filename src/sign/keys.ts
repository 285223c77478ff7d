import {createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject} from 'node:crypto'
import {readFile} from 'node:fs/promises'

import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {writeAtomic} from '../oci/layout.js'

export interface KeyPairFiles {
  privateKey: string
  publicKey: string
  /** sha256 of the public key's DER (SPKI): the bundle's key hint. */
  keyId: string
}

/** The passphrase from OVM_KEY_PASSWORD; a clear error when it is missing. */
export function passphraseFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  const p = env.OVM_KEY_PASSWORD
  if (p === undefined) {
    throw new AbortError({
      code: 'NO_PASSPHRASE',
      message: 'no passphrase for the private key: OVM_KEY_PASSWORD is not set',
      hint: 'Set OVM_KEY_PASSWORD (an empty value means an unencrypted key), or run in a terminal to be asked.',
      exitCode: ExitCode.usage,
    })
  }
  return p
}

export function keyId(pub: KeyObject): string {
  return createHash('sha256').update(pub.export({type: 'spki', format: 'der'})).digest('hex')
}

/** Write PREFIX.key (PKCS#8 PEM, AES-256 encrypted unless the passphrase is empty; mode 0600) and PREFIX.pub. */
export async function generateKeyPair(prefix: string, passphrase: string): Promise<KeyPairFiles> {
  const {privateKey, publicKey} = generateKeyPairSync('ec', {namedCurve: 'P-256'})
  const priv =
    passphrase === ''
      ? privateKey.export({type: 'pkcs8', format: 'pem'})
      : privateKey.export({type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase})
  const files = {privateKey: `${prefix}.key`, publicKey: `${prefix}.pub`, keyId: keyId(publicKey)}
  await writeAtomic(files.privateKey, Buffer.from(priv), 0o600)
  await writeAtomic(files.publicKey, Buffer.from(publicKey.export({type: 'spki', format: 'pem'})))
  return files
}

export async function loadPrivateKey(path: string, passphrase: string): Promise<{privateKey: KeyObject; publicKey: KeyObject}> {
  let pem: string
  try {
    pem = await readFile(path, 'utf8')
  } catch (err) {
    throw fileError(err, path, 'private key')
  }
  try {
    const key = createPrivateKey({key: pem, format: 'pem', ...(passphrase === '' ? {} : {passphrase})})
    checkP256(key, path)
    return {privateKey: key, publicKey: createPublicKey(key)}
  } catch (err) {
    if (err instanceof AbortError) throw err
    const msg = (err as Error).message
    throw new AbortError({
      code: 'BAD_PRIVATE_KEY',
      message: `cannot read private key ${path}: ${/passphrase|decrypt|bad decrypt/i.test(msg) ? 'wrong passphrase or not encrypted as expected' : msg}`,
      hint: 'Check OVM_KEY_PASSWORD, and that the file was made by `ovm key generate` (an EC P-256 PKCS#8 PEM key).',
      exitCode: ExitCode.invalid,
      ref: path,
      cause: err,
    })
  }
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  let pem: string
  try {
    pem = await readFile(path, 'utf8')
  } catch (err) {
    throw fileError(err, path, 'public key')
  }
  try {
    const key = createPublicKey({key: pem, format: 'pem'})
    checkP256(key, path)
    return key
  } catch (err) {
    if (err instanceof AbortError) throw err
    throw new AbortError({
      code: 'BAD_PUBLIC_KEY',
      message: `cannot read public key ${path}: ${(err as Error).message}`,
      hint: 'Pass the .pub file made by `ovm key generate` (or `cosign generate-key-pair`): a PEM public key.',
      exitCode: ExitCode.invalid,
      ref: path,
      cause: err,
    })
  }
}

function checkP256(key: KeyObject, path: string): void {
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new AbortError({
      code: 'UNSUPPORTED_KEY',
      message: `${path} is a ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''} key; ovm signs with ECDSA P-256`,
      hint: 'Make a key with `ovm key generate`.',
      exitCode: ExitCode.invalid,
      ref: path,
    })
  }
}
